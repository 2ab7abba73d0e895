"""Large policy files are parsed in child processes: the same entries and the same problems."""

import os

import pytest
import structlog
import trio

from sluice.daemon.parsing import Parser, load
from sluice.daemon.policy_dir import PolicyReader, parse_file
from sluice.policy.errors import PolicyLoadError
from sluice.policy.files import CHUNK_TABLES

NAME = "50-bulk.toml"


def suspensions(n: int, start: int = 0) -> str:
    out = []
    for i in range(start, start + n):
        expires = "expires = 2031-05-01T12:00:00+02:00\n" if i % 3 == 0 else ""
        where = f'domain = "d{i}.example"' if i % 2 else f'tenant = "t{i}"\ncampaign = "c{i}"'
        out.append(f"[[suspension]]\n{where}\nreason = \"held {i}\"\n{expires}")
    return "\n".join(out)


BIG = suspensions(3 * CHUNK_TABLES)
TEXTS = {
    "well formed, read in two pieces": BIG + '\n[[queue]]\nname = "acme@q.example"\npaused = true\n',
    "problems in entries": BIG + '\n[[suspension]]\ndomian = "typo.example"\nreason = "r"\n'
    + '\n[[suspension]]\ndomain = "x.example"\nreason = "r"\nexpires = "tomorrow"\n',
    "a TOML syntax error": BIG + "\n[[suspension]\n",
    "an unknown table above the rest": '[[suspenion]]\ndomain = "x.example"\n' + BIG,
    "nested too deeply": "x = " + "[" * 5000 + "]" * 5000 + "\n" + BIG,
}


@pytest.mark.parametrize("what", list(TEXTS))
async def test_a_file_parsed_in_child_processes_is_the_file_parsed_in_process(what):
    data = TEXTS[what].encode()
    parser = Parser(large=1024, children=2)
    in_child = await parser.parse(data, NAME)
    assert parser.started >= 1  # it went to a child process
    assert in_child == parse_file(data, NAME)
    if what.startswith("well formed"):
        assert parser.started == 2 and len(in_child.suspensions) == 3 * CHUNK_TABLES
    else:
        assert in_child.problems


async def test_bytes_that_are_not_utf8_are_the_same_problem_in_a_child():
    data = b'[[suspension]]\ndomain = "\xff.example"\nreason = "r"\n' + BIG.encode()
    parser = Parser(large=1024)
    assert await parser.parse(data, NAME) == parse_file(data, NAME)
    assert parser.started >= 1


async def test_a_reload_through_child_processes_gives_the_policy_and_errors_of_one_in_process(tmp_path):
    """The directory read with its large file in a child and its small one in process,
    against the same directory read in process: the same policy, then the same errors."""
    (tmp_path / "10-small.toml").write_text('[[suspension]]\ndomain = "small.example"\nreason = "r"\n')
    (tmp_path / NAME).write_text(TEXTS["well formed, read in two pieces"])
    parser = Parser(large=len(BIG) // 2)
    in_child = await load(PolicyReader(tmp_path), parser)
    assert parser.started == 2
    assert in_child == PolicyReader(tmp_path).load()

    # the small file now names a queue the large one names: one error, told alike
    (tmp_path / "10-small.toml").write_text('[[queue]]\nname = "acme@q.example"\npaused = true\n')
    with pytest.raises(PolicyLoadError) as in_process:
        PolicyReader(tmp_path).load()
    with pytest.raises(PolicyLoadError) as through_child:
        await load(PolicyReader(tmp_path), Parser(large=len(BIG) // 2))
    assert [str(p) for p in through_child.value.problems] == [str(p) for p in in_process.value.problems]
    assert "queue 'acme@q.example' is also defined at 10-small.toml:1" in str(through_child.value)


def parser_children(pid: int) -> list[int]:
    """The daemon's parser processes alive now."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:  # a thread that ended meanwhile
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"sluice.daemon.parse_child" in f.read():
                        found.append(int(child))
            except OSError:  # it ended meanwhile
                pass
    return found


def test_a_parser_process_killed_mid_parse_is_a_refused_reload_and_the_old_policy_answers(daemon):
    """A parser process that dies (here SIGKILL, as the kernel's OOM killer sends) fails that
    reload with the file named; the policy in force goes on answering; the next reload
    parses the file again (its bytes were never judged) and takes effect."""
    import concurrent.futures
    import signal

    held = lambda queue: not daemon.get("/api/check/v1", params={"queue": queue}).json()["deliver"]
    large = suspensions(30_000)  # 2 MB: parsed in child processes
    daemon.write(NAME, large + '\n[[suspension]]\ndomain = "old.example"\nreason = "old"\n')
    daemon.start()
    assert held("old.example") and held("d1.example")

    daemon.write(NAME, large + '\n[[suspension]]\ndomain = "new.example"\nreason = "new"\n')
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(daemon.post, "/api/admin/reload/v1")
        killed = 0
        while not answer.done():
            for child in parser_children(daemon.proc.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass  # it ended meanwhile
        response = answer.result()
    assert killed, "no parser process was seen to kill"
    # whichever reload met the killed process (this one or the watcher's), it was refused
    last = daemon.status()["last_reload"]
    failed = response.json() if response.status_code != 200 else {"error": {"message": "; ".join(last["errors"])}}
    assert f"{NAME}: could not be parsed: the parser process was killed by SIGKILL" in failed["error"]["message"]
    assert held("old.example") and not held("new.example")  # the policy in force stays

    response = daemon.post("/api/admin/reload/v1")
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True
    assert held("new.example") and not held("old.example") and held("d1.example")


async def test_a_load_whose_only_problem_is_a_dead_parser_says_so(tmp_path, monkeypatch):
    """At start this is EX_TEMPFAIL, not EX_CONFIG: the files were never judged."""
    import subprocess

    from sluice.daemon import parsing

    async def killed(command, **kwargs):
        return subprocess.CompletedProcess(command, -9, b"", b"")

    (tmp_path / NAME).write_text(BIG)
    monkeypatch.setattr(parsing.trio, "run_process", killed)
    with pytest.raises(parsing.PolicyNotRead) as died:
        await load(PolicyReader(tmp_path), Parser(large=len(BIG) // 2))
    assert "the parser process was killed by SIGKILL" in str(died.value)

    # beside a file that is wrong in itself, the load is the files' fault: not PolicyNotRead
    (tmp_path / "10-bad.toml").write_text('[[suspension]]\ndomian = "x.example"\n')
    with pytest.raises(PolicyLoadError) as refused:
        await load(PolicyReader(tmp_path), Parser(large=len(BIG) // 2))
    assert type(refused.value) is PolicyLoadError and "10-bad.toml" in str(refused.value)


def test_sluiced_exits_75_when_its_parser_is_killed_at_start(tmp_path, monkeypatch, capsys):
    """75 (EX_TEMPFAIL) is restarted by the unit; 78 (EX_CONFIG, a wrong file) is not."""
    import subprocess

    from sluice.daemon import main as sluiced
    from sluice.daemon import parsing

    async def killed(command, **kwargs):
        return subprocess.CompletedProcess(command, -9, b"", b"")

    policy = tmp_path / "policy.d"
    policy.mkdir()
    (policy / NAME).write_text(suspensions(30_000))  # 2 MB: parsed in child processes
    config = tmp_path / "sluiced.toml"
    config.write_text(
        f'policy_dir = "policy.d"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[admin]\nsocket = "{tmp_path / "admin.sock"}"\n[postfix]\nsocket = ""\n'
    )
    # main() configures logging and the allocator for its process: this one's are put back
    logging_before = structlog.get_config()
    monkeypatch.setattr(sluiced, "map_large_blocks", lambda: None)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(parsing.trio, "run_process", killed)
            assert sluiced.main(["--config", str(config)]) == sluiced.EX_TEMPFAIL
        assert "the parser process was killed by SIGKILL" in capsys.readouterr().err

        (policy / "10-bad.toml").write_text('[[suspension]]\ndomian = "x.example"\n')
        assert sluiced.main(["--config", str(config)]) == sluiced.EX_CONFIG
        assert "10-bad.toml" in capsys.readouterr().err
    finally:
        structlog.configure(**logging_before)
