"""The tokens file: digests only, every problem located, constant-time lookup."""

import hashlib

from sluice.policy.tokens import new_token, parse_tokens


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def test_find_by_token():
    tokens, problems = parse_tokens(
        f'[[token]]\nname = "bot"\nsha256 = "{digest("s1")}"\nrole = "admin"\n'
        f'[[token]]\nname = "ro"\nsha256 = "{digest("s2")}"\nrole = "read"\n',
        "tokens.toml",
    )
    assert problems == []
    assert tokens.find("s1").name == "bot"
    assert tokens.find("s2").role == "read"
    assert tokens.find("s3") is None
    assert tokens.find("") is None


def test_problems_are_located():
    _, problems = parse_tokens(
        '[[token]]\nname = "bot"\nsha256 = "ABC"\nrole = "root"\nsecret = "x"\n'
        '[[token]]\nsha256 = "%s"\nrole = "read"\n'
        '[[token]]\nname = "bot"\nsha256 = "%s"\nrole = "read"\n' % (digest("a"), digest("b")),
        "tokens.toml",
    )
    found = [(p.line, p.key_path, p.message) for p in problems]
    assert (5, "token[0].secret", "unknown field; a token has: name, sha256, role") in found
    assert (3, "token[0].sha256", "expected 64 lowercase hex digits (sha256 of the token)") in found
    assert (4, "token[0].role", "expected admin or read") in found
    assert (6, "token[1].name", "is required") in found
    assert len(found) == 4


def test_a_name_used_twice_is_refused():
    _, problems = parse_tokens(
        '[[token]]\nname = "bot"\nsha256 = "%s"\nrole = "read"\n\n'
        '[[token]]\nname = "bot"\nsha256 = "%s"\nrole = "admin"\n' % (digest("a"), digest("b")),
        "tokens.toml",
    )
    assert [(p.line, p.key_path) for p in problems] == [(6, "token[1].name")]
    assert "also used at line 1" in problems[0].message


def test_new_token_is_random_and_matches_its_digest():
    a, da = new_token()
    b, _ = new_token()
    assert a != b and len(a) > 40
    assert hashlib.sha256(a.encode()).hexdigest() == da
