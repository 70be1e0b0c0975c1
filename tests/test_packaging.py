"""A non-editable install carries schedules/, export/ and tuning_logs/ inside nha_tvm."""

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_ships_schedules_export_and_tuning_logs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("nha_tvm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("nha_tvm/schedules/cuda/chunk_attend.py", "nha_tvm/schedules/llvm/parallel_outer.py",
                 "nha_tvm/export/__init__.py", "nha_tvm/tuning_logs/README.md",
                 "nha_tvm/tuning_logs/sm_90/metadata.json",
                 "nha_tvm/tuning_logs/sm_90/database_tuning_record.json",
                 "nha_tvm/export/NHA_DOMAIN.md",
                 "nha_tvm/kernels/chunk_attend.py", "nha_tvm/kernels/cuda/chunk_attend.py",
                 "nha_tvm/kernels/cuda/decode_step.py", "nha_tvm/schedules/cuda/premapped.py"):
        assert path in names
    # installed outside the checkout, imported from elsewhere: the schedules are found
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    probe = ("import nha_tvm, nha_tvm.schedules as s, nha_tvm.export, nha_tvm.tuning_logs; "
             "print(nha_tvm.__file__, s.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout
    assert str(site) in out and str(ROOT) not in out
