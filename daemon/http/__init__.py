"""HTTP: the h11 adapter (server), peers and authorisation, the route table, routes."""
