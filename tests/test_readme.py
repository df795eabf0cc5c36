"""Every code block of README.md runs, against the virtual STM32, so the front door cannot drift.

Blocks are found automatically (a new README section is tested without touching this file).
What a block is and how it runs is said in the README itself, in HTML comments on the lines
just before its fence (invisible on GitHub); see the README's "Development" section:

- the fence's language decides: ``sh``/``bash`` run command by command (in-process for a
  plain ``stmflash ...`` line, else ``bash -c``), ``python`` runs with ``exec``, ``toml``
  is parsed (and checked as a batch job file when it has an ``image`` key); ``text`` is not
  code. A fence without a language is an error: say ``text`` when it is not code.
- ``<!-- readme-test: skip: REASON -->`` - not run here (needs a board, root, the network);
  the reason is required.
- ``<!-- readme-test: replace OLD => NEW -->`` - rewrite the block first (e.g. a real port
  to ``sim://F407``); ``<!-- readme-test: env NAME=VALUE -->`` - environment for the block;
  ``<!-- readme-test: exit N -->`` - the exit code every command must give (default 0);
  ``<!-- readme-test: script -->`` - run the whole block as one bash script;
  ``<!-- readme-test: serve PREFIX -->`` - commands starting with PREFIX are servers: started,
  their first stdout line awaited, then stopped with SIGINT (exit 0 or 130);
  ``<!-- readme-test: needs PROGRAM -->`` - skip (with that reason) when a peer program is
  not installed (CI installs it).

Every command runs in a fresh directory holding the files README examples name
(:data:`FIXTURE_NAMES`), with ``$HOME`` there too, so nothing outside it is touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_LANGS = {"sh", "bash", "python", "toml"}
TEXT_LANGS = {"text"}
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None
    replace: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    exit: int = 0
    script: bool = False
    serve: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'none'}"


def parse_readme(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(`{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).strip().lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        block = Block(start + 1, lang, "\n".join(body) + "\n")
        j = start
        while j > 0 and DIRECTIVE.match(lines[j - 1].strip()):
            j -= 1
        for k in range(j, start):  # top-down: replacements apply in the order written
            _directive(block, DIRECTIVE.match(lines[k].strip()).group("body"))  # type: ignore[union-attr]
        blocks.append(block)
        i += 1
    return blocks


def _directive(block: Block, body: str) -> None:
    word, _, rest = body.partition(" ")
    word = word.rstrip(":")
    rest = rest.strip()
    if word == "skip":
        reason = rest.lstrip(":").strip()
        if len(reason) < 10:
            block.problems.append(f"'skip' needs a reason (at least a few words), got {reason!r}")
        block.skip = reason
    elif word == "replace":
        old, sep, new = rest.partition("=>")
        if not sep or not old.strip():
            block.problems.append(f"'replace' needs OLD => NEW, got {rest!r}")
        block.replace.append((old.strip(), new.strip()))
    elif word == "env":
        name, sep, value = rest.partition("=")
        if not sep:
            block.problems.append(f"'env' needs NAME=VALUE, got {rest!r}")
        block.env[name.strip()] = value.strip()
    elif word == "exit":
        block.exit = int(rest)
    elif word == "script":
        block.script = True
    elif word == "serve":
        block.serve.append(rest)
    elif word == "needs":
        block.needs += rest.split()
    else:
        block.problems.append(f"unknown readme-test directive {body!r}")


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))


# ---- the sandbox ---------------------------------------------------------------------------
FIXTURE_NAMES = ("firmware.hex", "fw.hex", "app.hex", "fw.elf", "app.elf", "fw.bin", "boot.bin", "app.bin",
                 "app.dfu", "multi.dfu", "fw.srec", "otp.bin", "line3.toml", "build/fw.hex", "app.img", "f4.img")


def _app_at(address: int, size: int = 1024) -> bytes:
    """A minimal application linked at ``address``: stack at the end of F407 SRAM, reset
    handler an endless loop (``b .``) right after the vector table."""
    table = struct.pack("<II", 0x20020000, address + 0x101)
    body = bytearray(b"\xff" * size)
    body[: len(table)] = table
    body[0x100:0x102] = b"\xfe\xe7"
    return bytes(body)


F4_UID = "2a0035000d51353035363237"


def _elf(address: int, data: bytes) -> bytes:
    """An ARM ELF32 executable with one PT_LOAD segment of ``data`` at ``address``."""
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 40, 1, address + 0x101, 52, 0,
                       0x05000000, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 84, address, address, len(data), len(data), 5, 4)
    return ehdr + phdr + data


def make_sandbox(path: Path) -> None:
    from stmflash.devices import find
    from stmflash.image import load, save
    from stmflash.image.model import Image
    from stmflash.sim import VirtualChip

    ex = ROOT / "examples"
    shutil.copytree(ex, path / "examples")
    for name, src in (("firmware.hex", "blinky-f407.hex"), ("fw.hex", "blinky-f407.hex"),
                      ("fw.elf", "blinky-f407.elf"), ("fw.bin", "blinky-f407.bin"),
                      ("boot.bin", "blinky-f407.bin"), ("fw.srec", "blinky-f407.srec")):
        shutil.copy(ex / src, path / name)
    (path / "app.bin").write_bytes(_app_at(0x08004000))  # an application behind a bootloader
    save(Image.from_bytes(_app_at(0x08004000), 0x08004000), str(path / "app.hex"))
    (path / "app.elf").write_bytes(_elf(0x08004000, _app_at(0x08004000)))
    (path / "otp.bin").write_bytes(b"board rev C, calibrated 2026-01\0")
    board = VirtualChip(find("F407"), image_path=path / "app.img")  # a board running blinky
    for seg in load(str(ex / "blinky-f407.hex")).segments:
        board.preload(seg.address, seg.data)
    board.save()
    f4 = VirtualChip(find("F407"), image_path=path / "f4.img")  # a blank board with a known UID
    f4.uid = bytes.fromhex(F4_UID)  # so its DFU serial is known (README: 3767365F3035)
    f4.save()
    (path / "build").mkdir()
    shutil.copy(ex / "blinky-f407.hex", path / "build" / "fw.hex")
    save(load(str(ex / "blinky-f407.hex")), str(path / "app.dfu"))
    multi = Image.from_bytes(_app_at(0x08000000), 0x08000000)
    save(multi, str(path / "multi.dfu"))
    (path / "line3.toml").write_text(
        'image = "fw.hex"\ndevice = "F407"\ntargets = ["sim://F407?seed=1", "sim://F407?seed=2"]\n'
        'report_dir = "reports"\n[serial]\naddress = 0x080FFF00\nformat = "u32"\nledger = "serials.jsonl"\n'
    )


# ---- running a block -----------------------------------------------------------------------
def _commands(code: str) -> list[str]:
    out: list[str] = []
    pending = ""
    for raw in code.split("\n"):
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            out.append(line)
    return out


_SHELL_SYNTAX = re.compile(r"(&&|\|\||[|;&<>`]|\$\(|\$\{|\*)")


def _forget_virtual_chips() -> None:
    from stmflash.sim import registry, usb_backend

    registry.clear()
    with usb_backend._cache_lock:
        usb_backend._cache.clear()


def _in_process(argv: list[str]) -> tuple[int, str]:
    from stmflash.cli import main

    try:
        main(argv)
        return 0, ""
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)), ""


def run_server(cmd: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    import select
    import signal

    full_env = {**os.environ, **env, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        first = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ok = first.startswith("/dev/") and proc.returncode in (0, 130)
    return (0 if ok else proc.returncode or 1), first + err


def run_command(cmd: str, env: dict[str, str], cwd: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    words = shlex.split(cmd, comments=True)
    assigns = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        k, _, v = words.pop(0).partition("=")
        assigns[k] = v
    plain = words and words[0] == "stmflash" and not _SHELL_SYNTAX.search(cmd.split("#", 1)[0])
    full_env = {**os.environ, **env, **assigns}
    if plain:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(full_env)
        try:
            code, _ = _in_process(words[1:])
        finally:
            os.environ.clear()
            os.environ.update(saved)
            _forget_virtual_chips()  # as if each command were its own process
        captured = capfd.readouterr()
        return code, captured.out + captured.err
    bindir = str(Path(sys.executable).parent)
    full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_every_block_is_declared():
    """Each fence names its language, and every directive is well-formed."""
    problems = []
    for b in BLOCKS:
        if not b.lang:
            problems.append(f"README.md line {b.line}: fence without a language (use ```text if it is not code)")
        elif b.lang not in RUN_LANGS | TEXT_LANGS and b.skip is None:
            problems.append(f"README.md line {b.line}: ```{b.lang} cannot be run here; add a readme-test skip with a reason")
        problems += [f"README.md line {b.line}: {p}" for p in b.problems]
    assert not problems, "\n".join(problems)
    assert sum(1 for b in BLOCKS if b.lang in RUN_LANGS and b.skip is None) >= 10


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUN_LANGS], ids=lambda b: b.id)
def test_readme_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md line {block.line}: {block.skip}")
    for program in block.needs:
        if shutil.which(program) is None:
            pytest.skip(f"README.md line {block.line}: needs {program}, not installed (CI installs it)")
    code = block.code
    for old, new in block.replace:
        assert old in code, f"README.md line {block.line}: replace {old!r}: not in the block"
        code = code.replace(old, new)
    make_sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    env = {"HOME": str(tmp_path), **block.env}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    if block.lang == "toml":
        data = tomllib.loads(code)
        if "image" in data:
            from stmflash.production.job import parse_job

            parse_job(data, source=f"README.md:{block.line}", base=str(tmp_path))
        return
    if block.lang == "python":
        try:
            exec(compile(code, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
        finally:
            _forget_virtual_chips()
        return
    if block.script:
        rc, out = run_command(code, env, tmp_path, capfd)
        assert rc == block.exit, f"README.md line {block.line}: script exited {rc}:\n{out}"
        return
    try:
        _run_commands(block, code, env, tmp_path, capfd)
    finally:
        _forget_virtual_chips()


def _run_commands(block: Block, code: str, env: dict[str, str], tmp_path: Path, capfd) -> None:
    for cmd in _commands(code):
        if any(cmd.startswith(prefix) for prefix in block.serve):
            rc, out = run_server(cmd, env, tmp_path)
        else:
            rc, out = run_command(cmd, env, tmp_path, capfd)
        assert "Traceback" not in out, f"README.md line {block.line}: {cmd}\n{out}"
        assert rc == block.exit, f"README.md line {block.line}: `{cmd}` exited {rc} (expected {block.exit}):\n{out}"


def test_parser_sees_directives_and_refuses_reasonless_skips():
    text = (
        "<!-- readme-test: skip: needs a real board on a USB port -->\n```sh\nstmflash list\n```\n"
        "<!-- readme-test: skip -->\n```sh\nx\n```\n"
        "<!-- readme-test: replace /dev/ttyUSB0 => sim://F407 -->\n<!-- readme-test: exit 3 -->\n"
        "```sh\nstmflash uart /dev/ttyUSB0\n```\n```\nplain\n```\n"
    )
    a, b, c, d = parse_readme(text)
    assert a.skip == "needs a real board on a USB port" and not a.problems
    assert b.problems and "reason" in b.problems[0]
    assert c.replace == [("/dev/ttyUSB0", "sim://F407")] and c.exit == 3 and c.line == 11
    assert d.lang == "" and d.code == "plain\n"
    assert _commands("a \\\n  b  # c\n# only a comment\n\nd\n") == ["a    b  # c", "d"]
