"""Architecture rules that a refactoring could silently break."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIORTC_OBJECTS_PRIVATE = (
    "_codecs",
    "_headerExtensions",
    "_ssrc",
    "_rtx_ssrc",
    "_tx_srtp",
    "_nominated",
    "_connection",
    "_handle_rtp_data",
    "_handle_rtcp_data",
    "_send_rtp",
    "_rtp_router",
    "_handle_rtcp_packet",
    "_run_rtp",
)


def test_private_aiortc_members_are_used_only_in_the_adapter() -> None:
    offenders = []
    for path in sorted((ROOT / "sfu").glob("*.py")):
        if path.name == "aiortc_adapter.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (
                node.attr in AIORTC_OBJECTS_PRIVATE or node.attr.startswith("_RTC")
            ):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_ipc_imports_only_pyzmq_and_msgspec() -> None:
    code = (
        "import sys, ipc.channel, ipc.codec, ipc.messages, ipc.settings\n"
        "third = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "print(sorted(third))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    # pyzmq's own runtime pieces (cython, typing_extensions) come with it; the interpreter
    # adds __main__, and setuptools its _distutils_hack and editable-install finder.
    allowed = {"ipc", "zmq", "msgspec", "typing_extensions", "__main__", "_distutils_hack"}
    allowed |= {
        name for name in eval(out) if name.startswith(("_cython", "cython_", "__editable__"))
    }  # noqa: S307
    assert set(eval(out)) <= allowed, out  # noqa: S307 - our own subprocess's output
