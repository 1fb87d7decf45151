"""`python -m figures --profile smoke` writes every output, each non-empty and stamped."""
import json
import subprocess
import sys

from figures.make_all import OUTPUTS


def test_reproduce_smoke_writes_every_stamped_output(smoke_root, tmp_path):
    out = tmp_path / "figs"
    cmd = [sys.executable, "-m", "figures", "--profile", "smoke", "--results",
           str(smoke_root), "--out", str(out), "--jobs", "1", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for key, o in OUTPUTS.items():
        exts = ("png", "pdf") if o.kind == "figure" else ("csv", "md", "tex")
        for ext in exts:
            f = out / f"{key}.{ext}"
            assert f.is_file() and f.stat().st_size > 0, f
            stamp = json.loads((out / f"{key}.{ext}.stamp.json").read_text())
            assert stamp["profile"] == "smoke" and stamp["package_version"] and stamp["output"] == key
            if o.studies:
                assert stamp["seeds"] and stamp["config_hashes"] and stamp["data_sha256"]
            if ext in ("png", "pdf"):  # embedded in the file itself too
                assert b'"profile": "smoke"' in f.read_bytes()
            else:
                assert "profile smoke" in f.read_text() or '"profile": "smoke"' in f.read_text()
    report = (out / "REPORT.md").read_text()
    for claim in ("C1", "C2", "C5", "C6", "C7"):
        assert f"### {claim}." in report
    assert "Verdict" in report and "profile smoke" in report
    # warm cache: a second build only redraws (no study reruns), and --only limits the outputs
    res = subprocess.run(cmd + ["--only", "F1,T5"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    bad = subprocess.run(cmd + ["--only", "F99"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown output" in bad.stderr and "Traceback" not in bad.stderr
