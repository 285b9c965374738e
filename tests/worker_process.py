"""The parent's end of a fuzz test's worker: the test file run again as a script with --worker,
speaking one JSON line per message over its stdin and stdout, so that a crash or a hang of a case
cannot take pytest down. Shared by test_fuzz_api.py and test_fuzz_loaders.py."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """`script --worker` with this checkout first on its path and its stderr appended to
    log_path; the worker's first line says it is ready (checked by `ready`)."""

    def __init__(self, script, log_path, ready=lambda line: line == "ready"):
        self.script, self.log_path, self.ready = script, log_path, ready
        self.start()

    def start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                           os.environ.get("PYTHONPATH", "")]))
        self.log = open(self.log_path, "ab")
        self.log_start = self.log.tell()  # where this worker's stderr begins
        self.proc = subprocess.Popen([sys.executable, str(self.script), "--worker"], cwd=ROOT,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self.buffer = b""
        line = self.readline(600)
        assert line and self.ready(line), self.log_tail()

    def send(self, message) -> bool:
        """Writes one JSON line; False when the worker has gone."""
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def readline(self, timeout):
        """The next line, or None (timeout) or "" (the worker died)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def log_tail(self):
        """This worker's stderr (faulthandler's stack of a crash comes first)."""
        self.log.flush()
        return Path(self.log_path).read_bytes()[self.log_start:][:3000].decode(errors="replace")

    def restart(self, line, timeout) -> str:
        """After readline gave `line` (None: a hang, "": a crash): kills the worker, starts a
        new one and says what happened to the old."""
        self.proc.kill()  # the worker this object started
        rc = self.proc.wait()
        how = f"hang (over {timeout:.0f} s)" if line is None else \
            f"crash (exit {rc}): {self.log_tail()}"
        self.close()
        self.start()
        return how

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()
