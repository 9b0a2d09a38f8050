"""Starts `switchyard serve` as one plain process (no mpirun) for a test and stops it.

    with ServeProcess(binary, model, work, "--kv-memory", "0") as server:
        stub = server.stub()            # a switchyard.v1 stub on the bound port
    server.output                       # everything it printed; it exited 0 on SIGTERM
"""
import os
import subprocess
import time

import grpc
from switchyard.v1 import switchyard_pb2_grpc as pbg


class ServeProcess:
    def __init__(self, binary, model, work, *flags):
        self.port_file = os.path.join(work, "port")
        self.args = [binary, "serve", "--model", model, "--listen", "127.0.0.1:0",
                     "--port-file", self.port_file, *flags]
        self.output = ""

    def __enter__(self):
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        for _ in range(300):
            if os.path.exists(self.port_file) and os.path.getsize(self.port_file) > 0:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args} exited: {self.proc.stdout.read()}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"{self.args} did not start within 15 s")

    def stub(self):
        port = open(self.port_file).read().strip()
        return pbg.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.output = self.proc.communicate(timeout=30)[0]
        if exc[0] is None:
            assert self.proc.returncode == 0, self.output
        return False
