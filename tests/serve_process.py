"""Starts `switchyard serve` as one plain process (no mpirun) for a test and stops it.

    with ServeProcess(binary, model, work, "--kv-memory", "0") as server:
        stub = server.stub()            # a switchyard.v1 stub on the bound port
    server.output                       # everything it printed; it exited 0 on SIGTERM

Its output goes to WORK/serve.log, not a pipe: a pipe nobody reads fills up (the access log
writes a line per request) and would stall the server.
"""
import os
import subprocess
import time

import grpc
from switchyard.v1 import switchyard_pb2_grpc as pbg


class ServeProcess:
    def __init__(self, binary, model, work, *flags):
        self.port_file = os.path.join(work, "port")
        self.log_file = os.path.join(work, "serve.log")
        self.args = [binary, "serve", "--model", model, "--listen", "127.0.0.1:0",
                     "--port-file", self.port_file, *flags]
        self.output = ""

    def __enter__(self):
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):
            if os.path.exists(self.port_file) and os.path.getsize(self.port_file) > 0:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args} exited: {self.read_log()}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"{self.args} did not start within 15 s")

    def read_log(self):
        with open(self.log_file) as f:
            return f.read()

    def port(self):
        return open(self.port_file).read().strip()

    def stub(self):
        return pbg.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{self.port()}"))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.output = self.read_log()
        if exc[0] is None:
            assert self.proc.returncode == 0, self.output
        return False
