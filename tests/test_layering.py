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
    adapter = ROOT / "sfu" / "aiortc_adapter"
    assert (adapter / "__init__.py").is_file()  # the exemption below names a real package
    offenders = []
    for path in sorted((ROOT / "sfu").rglob("*.py")):  # subpackages (sfu/media/) too
        if path.is_relative_to(adapter):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (
                node.attr in AIORTC_OBJECTS_PRIVATE or node.attr.startswith("_RTC")
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offenders == []


def _modules(package: str) -> list[str]:
    """Every module of `package`, dotted."""
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / package).rglob("*.py")
    )


def _loaded_packages(modules: list[str]) -> set[str]:
    """The top-level packages outside the standard library that importing `modules` loads."""
    code = (
        f"import sys, {', '.join(modules)}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded: list[str] = ast.literal_eval(out)
    # The interpreter adds __main__, setuptools its _distutils_hack and editable-install
    # finder; pyzmq's own runtime pieces (cython, typing_extensions) come with it.
    runtime = {"__main__", "_distutils_hack", "typing_extensions"}
    return {
        name
        for name in loaded
        if name not in runtime and not name.startswith(("_cython", "cython_", "__editable__"))
    }


def test_ipc_imports_only_pyzmq_and_msgspec() -> None:
    loaded = _loaded_packages(_modules("ipc"))
    assert loaded <= {"ipc", "zmq", "msgspec"}, loaded


def test_common_imports_only_msgspec() -> None:
    loaded = _loaded_packages(_modules("common"))
    assert loaded <= {"common", "msgspec"}, loaded


def test_gateway_never_imports_sfu_aiortc_or_av() -> None:
    loaded = _loaded_packages(_modules("gateway"))
    assert "gateway" in loaded
    assert not loaded & {"sfu", "aiortc", "av"}, loaded


def test_bench_and_testkit_never_import_tests() -> None:
    """bench/ shares the gateway harness and the client with tests/ through testkit/, which
    must not reach into tests/ either (bench would then import tests/ through it)."""
    offenders = []
    for package in ("bench", "testkit"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                if any(name == "tests" or name.startswith("tests.") for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
