"""The store is import-light, and the trainer/evals CLIs load nothing heavy until a command runs."""

import subprocess
import sys

CHECK = """
import sys
import gateway.store, trainer, evals, trainer.cli, evals.cli
heavy = sorted(m for m in ("fastapi", "starlette", "uvicorn", "torch", "transformers", "peft", "trl", "sklearn")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_store_trainer_and_evals_import_without_the_server_or_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


def test_importing_the_gateway_package_does_not_import_fastapi():
    code = "import sys, gateway; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_call_record_imports_nothing_but_orjson():
    """Trainer, evals and a lean request worker can import the record without pyarrow or the server."""
    code = (
        "import sys; import gateway.protocol.record; "
        "print(','.join(sorted(m for m in ('pyarrow', 'duckdb', 'fastapi', 'opentelemetry') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
