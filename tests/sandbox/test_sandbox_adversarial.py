"""The adversarial suite: one hostile property per case. Each asserts the classified result AND the
host invariants (nothing written outside, no process left, supervisor alive, next execution fine)."""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest
from sandbox_hostile_cases import CASES, ERR, OK, assert_contained, render

from sandbox import prefault

from .conftest import Host

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile(name: str, sandbox, host: Host, outside: Path) -> None:
    case = CASES[name]
    r = await sandbox.execute(render(case.code, outside), timeout_s=case.timeout_s, memory_mb=case.memory_mb)
    assert_contained(name, case, r, outside)
    await host.assert_intact()


# ---- cases that need listeners or a second execution ----------------------------------------------


async def test_tcp_to_loopback_listener(sandbox, host: Host) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        r = await sandbox.execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert r.status == ERR, r
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
    await host.assert_intact()


async def test_udp_to_loopback_listener(sandbox, host: Host) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        r = await sandbox.execute(
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'leak', ('127.0.0.1', {port}))")
        assert r.status == ERR, r
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            srv.recvfrom(100)
    finally:
        srv.close()
    await host.assert_intact()


async def test_abstract_unix_to_listener(sandbox, host: Host) -> None:
    name = f"\0mathagent-test-{uuid.uuid4().hex}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen()
    srv.setblocking(False)
    try:
        r = await sandbox.execute(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})")
        assert r.status == ERR, r
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
    await host.assert_intact()


async def test_connect_to_service_socket(sandbox, host: Host) -> None:
    path = sandbox.url[len("unix://"):]
    r = await sandbox.execute(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})")
    assert r.status == ERR, r
    await host.assert_intact()


async def test_kill_all_with_another_execution_alive(sandbox, host: Host) -> None:
    victim = asyncio.create_task(sandbox.execute("import time\ntime.sleep(1.0)\nprint('survived')", timeout_s=5))
    await asyncio.sleep(0.3)
    r = await sandbox.execute("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('after')")
    assert r.status in {OK, ERR}, r
    v = await victim
    assert v.status == OK and v.stdout == "survived\n", v
    await host.assert_intact()


async def test_secrets_not_in_environment_or_memory(tmp_path) -> None:
    from support.sandbox_service import running_sandbox

    secret = "hunter2-" + uuid.uuid4().hex
    # Scan every private (anonymous, heap, stack) mapping in place with memmem. The needle is built
    # in place from an XOR-masked copy, so the only legitimate match is the needle buffer itself.
    masked = list(bytes(b ^ 0x55 for b in secret.encode()))
    code = textwrap.dedent(f"""
        import ctypes, os, re
        needle = bytearray({masked!r})
        for i in range(len(needle)):
            needle[i] ^= 0x55
        n = len(needle)
        naddr = ctypes.addressof((ctypes.c_char * n).from_buffer(needle))
        libc = ctypes.CDLL(None)
        libc.memmem.restype = ctypes.c_void_p
        libc.memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        found = [k for k, v in os.environb.items() if bytes(needle) in v]
        for line in open('/proc/self/maps').read().splitlines():
            f = line.split()
            if not f[1].startswith('r') or (f[4] != '0' and not line.endswith(('[heap]', '[stack]'))):
                continue
            if '[vvar' in line or '[vsyscall' in line:
                continue
            a, b = (int(x, 16) for x in f[0].split('-'))
            while a < b:
                hit = libc.memmem(a, b - a, naddr, n)
                if not hit:
                    break
                if hit != naddr:
                    found.append(f[-1])
                a = hit + 1
        print(found)
    """)
    async with running_sandbox(tmp_path, pool_size=1, max_sessions=1,
                               extra_env={"MATHAGENT_TEST_SECRET": secret, "OPENAI_API_KEY": secret}) as client:
        r = await client.execute(code, timeout_s=20)
        assert r.status == OK, r
        assert r.stdout.strip() == "[]", r.stdout


async def test_tampering_does_not_leak_into_next_execution(sandbox, host: Host) -> None:
    r1 = await sandbox.execute(textwrap.dedent("""
        import builtins, os, sympy, sys
        open('/tmp/mark', 'w').write('x')
        open('/dev/shm/mark', 'w').write('x')
        os.environ['TAMPERED'] = '1'
        sympy.solve = None
        sys.modules['json'] = None
        builtins.print = lambda *a, **k: None
    """))
    assert r1.status == OK, r1
    r2 = await sandbox.execute(textwrap.dedent("""
        import os, sympy, json
        print(os.path.exists('/tmp/mark'), os.path.exists('/dev/shm/mark'), 'TAMPERED' in os.environ,
              sympy.solve is None, os.listdir('/tmp'))
    """))
    assert r2.status == OK and r2.stdout == "False False False False []\n", r2
    await host.assert_intact()


async def test_no_result_is_cached_before_a_cell(sandbox) -> None:
    # Workers inherit loaded code, never a computed result (the zygote's warm-up and the prefault probe
    # clear sympy's cache): a stateless cell starts with sympy's result cache empty.
    code = "import sympy.core.cache as c\nprint(sum(f.cache_info().currsize for f in c.CACHE))"
    r = await sandbox.execute(code)
    assert r.status == OK and r.stdout == "0\n", r


async def test_workers_start_prefaulted(sandbox) -> None:
    # The zygote learned which pages a typical cell touches (a silent failure would only cost speed).
    if not prefault.supported():
        pytest.skip("kernel lacks MADV_POPULATE_WRITE")
    assert (await sandbox.health())["prefault_pages"] > 100


async def test_host_dev_shm_untouched(sandbox, host: Host) -> None:
    before = set(os.listdir("/dev/shm"))
    r = await sandbox.execute("open('/dev/shm/leak-test', 'wb').write(b'0' * 2**20)\nprint('ok')")
    assert r.status == OK, r
    assert "leak-test" not in set(os.listdir("/dev/shm")) - before
    await host.assert_intact()


async def test_traceback_shows_only_user_cells(sandbox) -> None:
    r = await sandbox.execute("import sympy\n\ndef g():\n    return sympy.sympify('1/(')\n\ng()")
    assert r.status == ERR
    assert '<cell 1>", line 4, in g' in r.stderr, r.stderr
    assert "harness" not in r.stderr and "site-packages" not in r.stderr and "/root/" not in r.stderr


