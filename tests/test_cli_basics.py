import subprocess
import sys

from stmflash import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stmflash", *args], capture_output=True, text=True, timeout=60)


def test_version():
    p = run_cli("--version")
    assert p.returncode == 0
    assert __version__ in p.stdout


def test_help_lists_commands():
    p = run_cli("--help")
    assert p.returncode == 0
    for name in ("uart", "dfu", "image", "devices", "sim", "batch", "trigger", "list"):
        assert name in p.stdout


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from stmflash.cli import cli; "
        "heavy=[m for m in ('usb','serial','elftools','intelhex','bincopy','hypothesis') if m in sys.modules]; "
        "print(heavy)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_unknown_command_is_usage_error():
    p = run_cli("frobnicate")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr


def test_shell_completion_through_click():
    import os

    env = dict(os.environ, COMP_WORDS="stmflash ima", COMP_CWORD="1", _STMFLASH_COMPLETE="bash_complete")
    p = subprocess.run([sys.executable, "-m", "stmflash"], capture_output=True, text=True, env=env, timeout=60)
    # click answers "type,value" lines; the lazy group must still offer its sub-commands
    assert "plain,image" in p.stdout.splitlines(), p.stdout + p.stderr
    env.update(COMP_WORDS="stmflash image co", COMP_CWORD="2")
    p = subprocess.run([sys.executable, "-m", "stmflash"], capture_output=True, text=True, env=env, timeout=60)
    assert "plain,convert" in p.stdout.splitlines(), p.stdout + p.stderr
