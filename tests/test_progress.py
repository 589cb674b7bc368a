"""Progress of long work: plain lines on a pipe (pytest's captured stderr is not a terminal), nothing disabled."""

import subprocess
import sys

from guidelab.progress import ProgressBar, counted, every


def test_a_pipe_gets_one_line_per_tenth_and_the_end(capsys):
    with ProgressBar(True, 25, "training") as bar:
        for k in range(25):
            bar.advance(status=f"loss {k}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert 10 <= len(lines) <= 13
    assert lines[0].startswith("training: 2/25 (8%")
    assert lines[-1].startswith("training: 25/25 (100%") and lines[-1].endswith("loss 24")


def test_a_description_replaces_the_label_and_disabled_or_empty_prints_nothing(capsys):
    with ProgressBar(True, 2, "runs") as bar:
        bar.advance(description="cfg multimodal-2d (done)")
        bar.advance(description="apg multimodal-2d (error)")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("apg multimodal-2d (error): 2/2")
    for enabled, total in [(False, 10), (True, 0)]:
        with ProgressBar(enabled, total, "x") as bar:
            bar.advance()
    assert capsys.readouterr().err == ""


def test_the_cli_shows_sampling_progress_when_piped(tmp_path):
    out = tmp_path / "x.npy"
    args = ["sample", "--target", "multimodal-2d", "--steps", "20", "--n", "8", "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "guidelab.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sampling (euler): 20/20 (100%" in result.stderr
    assert out.is_file()


def test_counts_take_the_number_of_their_noun():
    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "matrix", "matrices") == "1 matrix" and counted(3, "matrix", "matrices") == "3 matrices"
    assert [every(n, "run") for n in (1, 4)] == ["the only run", "all 4 runs"]
