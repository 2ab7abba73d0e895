"""Runtime state: the store interface, the file and etcd backends, and moving state between them."""
