"""Progress bars (refmem.progress): drawn when standard error is a terminal, nothing written otherwise; the
commands' outputs do not change."""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

from refmem.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    with progress_bar(3, "vectors", file=out) as bar:
        for _ in range(3):
            bar.update(1)
    assert out.getvalue() == ""


def test_drawn_on_a_terminal():
    out = _Terminal()
    with progress_bar(3, "vectors", file=out) as bar:
        bar.update(1)
    assert "vectors:" in out.getvalue() and "/3" in out.getvalue()


def test_no_label_no_bar_even_on_a_terminal():
    out = _Terminal()
    with progress_bar(3, None, file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def _generate(tmp_path, stderr):
    argv = [sys.executable, "-m", "refmem", "vectors", "generate", "--out", str(tmp_path), "--spec", "delta_rule"]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, timeout=300, check=False)


def _read_all(fd):
    chunks = []
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def test_cli_bar_on_a_terminal_and_silent_on_a_pipe(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 24 x 80, as a terminal window has
    argv = [sys.executable, "-m", "refmem", "vectors", "generate", "--out", str(tmp_path / "tty"), "--spec",
            "delta_rule"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)  # the child holds the terminal now; read it while the child writes
    shown = _read_all(master)
    os.close(master)
    stdout = proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    from refmem.vectors import CASES

    assert "vectors:" in shown and f"/{len(CASES)}" in shown  # the bar counts the cases of one spec
    piped = _generate(tmp_path / "pipe", subprocess.PIPE)
    assert piped.returncode == 0 and piped.stderr == b""
    assert piped.stdout == stdout.replace(b"tty", b"pipe")  # the report itself is the same


def test_verify_and_bench_draw_their_bars_on_a_terminal_only(monkeypatch, capsys):
    from refmem.cli import main

    for argv, label in ((["verify", "--spec", "l2"], "verify:"),
                        (["bench", "--memory", "delta_rule", "--seq-len", "8", "--heads", "1", "--dim", "4",
                          "--chunk", "4", "--dtype", "float64", "--repeat", "1", "--peak-size", "32"], "bench:")):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(argv) == 0
        table = capsys.readouterr().out
        assert label in terminal.getvalue()
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        assert main(argv) == 0
        assert sys.stderr.getvalue() == ""
        assert capsys.readouterr().out.splitlines()[0] == table.splitlines()[0]  # the same table either way
