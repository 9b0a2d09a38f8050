"""What the Python test scripts that speak raw gRPC share: finding the generated stubs and
Debian's grpc (restarting under /usr/bin/python3 when another python3 started the script), and
the protobuf wire format by hand, for requests a generated message could not express (invalid
UTF-8 in a string field, truncated fields)."""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_grpc(script):
    """Puts the generated stubs (build/python, or SWITCHYARD_PYTHON) on the path and makes sure
    grpc imports: restarts under /usr/bin/python3 if it does not, else exits naming `script`."""
    sys.path.insert(0, os.environ.get("SWITCHYARD_PYTHON", os.path.join(ROOT, "build", "python")))
    try:
        import grpc  # noqa: F401
    except ImportError:
        if os.path.exists("/usr/bin/python3") and \
                os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
            os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
        sys.exit(f"{script} needs Debian's python3-grpcio")


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, data):
    """A length-delimited field (wire type 2) holding `data` as is (no UTF-8 check)."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number, value):
    return varint(number << 3 | 0) + varint(value)


def field_float(number, value):
    return varint(number << 3 | 5) + struct.pack("<f", value)


def ser(msg):
    return msg.SerializeToString()
