"""What `entropyctl train` prints: warm-start progress, step k/N lines, the controller's story at the end."""

from __future__ import annotations

import io
import math
from pathlib import Path

from entropyctl.models.warm_start import WarmStartProgress
from entropyctl.trainer.module import RLVRProgress, controller_story


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_warm_start_logs_every_tenth_to_a_file_and_says_where_it_is_cached() -> None:
    out = io.StringIO()
    progress = WarmStartProgress(50, Path("/cache/tiny/abc"), stream=out)
    progress.start()
    for step in range(1, 51):
        progress(step, 2.0 - step / 50)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert "once" in lines[0] and "/cache/tiny/abc" in lines[0]
    assert [line for line in lines if "%: step" in line][0].startswith(
        "[entropyctl] warm start  10%: step 5/50"
    )
    assert len([line for line in lines if "%: step" in line]) == 10
    assert "/cache/tiny/abc" in lines[-1]


def test_warm_start_bar_on_a_terminal_fits_100_columns() -> None:
    out = _Terminal()
    progress = WarmStartProgress(20, Path("/c"), stream=out)
    progress.start()
    for step in range(1, 21):
        progress(step, 1.0)
    drawn = [part for part in out.getvalue().split("\r") if "warm start [" in part]
    assert drawn and all(len(part.split("\n")[0]) < 100 for part in drawn)
    assert "20/20" in drawn[-1]


def _rows(alphas, entropies, target=0.29):
    return [
        {"step": i + 1, "alpha": a, "entropy": h, "target_entropy": target, "reward": 0.5, "accuracy": 0.5}
        for i, (a, h) in enumerate(zip(alphas, entropies, strict=True))
    ]


def test_controller_story() -> None:
    never = controller_story(_rows([0.0] * 120, [0.5] * 120))
    assert (
        never.startswith("α was 0 on 120/120 steps: entropy stayed above H* = 0.29")
        and "never engaged" in never
    )
    some = controller_story(_rows([0.0] * 117 + [0.01, 0.02, 0.0], [0.5] * 117 + [0.2, 0.25, 0.3]))
    assert "α was 0 on 118/120 steps, up to 0.02" in some and "above H* = 0.29 on 118/120 steps" in some
    fixed = controller_story(_rows([0.001] * 5, [0.5, 0.4, 0.3, 0.2, 0.1], target=math.nan))
    assert fixed.startswith("α = 0.001 throughout (no entropy target)")


def test_controller_story_says_when_the_bonus_does_not_reach_the_tokens() -> None:
    """A row's alpha is what the next step applies; coef_mean is what the step's tokens got."""
    alphas = [0.01, 0.02, 0.04, 0.08]
    rows = _rows(alphas, [0.3, 0.2, 0.1, 0.05])
    for row, coef in zip(rows, [0.01, 0.01, 0.0, 0.01], strict=True):
        row["coef_mean"] = coef
    story = controller_story(rows)  # the tokens got (0.01 + 0 + 0.01) / (0.01 + 0.02 + 0.04) of α
    assert story.endswith(
        "; the rollouts' tokens got 29% of α (the allocation, skipped steps or update.apply's gate withheld the rest)"
    )
    for row, previous in zip(rows[1:], alphas, strict=False):
        row["coef_mean"] = previous  # every token got the α its step applied: nothing to say
    assert "tokens got" not in controller_story(rows)
    rows[2]["grad_norm"] = rows[3]["grad_norm"] = 0.0  # skipped steps: their bonus moved nothing
    assert "tokens got 14% of α" in controller_story(rows)  # (0.01 + 0 + 0) / (0.01 + 0.02 + 0.04)


def test_progress_lines_in_a_log_file() -> None:
    out = io.StringIO()
    progress = RLVRProgress(20, every=5, stream=out)
    progress.first_step = 0
    for row in _rows([0.0] * 20, [0.5] * 20):
        progress.rows.append(row)
        if row["step"] % progress.every == 0:
            out.write(progress.line(row) + "\n")
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert all(len(line) < 100 for line in lines)
    assert all(key in lines[0] for key in ("H ", "H* ", "α ", "reward ", "acc "))
    no_target = progress.line(_rows([0.01], [0.5], target=math.nan)[0])  # fixed, clip_higher
    assert "H* " not in no_target and "nan" not in no_target and "α 0.01" in no_target


def test_controller_story_says_how_much_bonus_the_tokens_got_and_when() -> None:
    """AER's α can sit at 1e-4 for most of a run and climb at the end: the story gives the mean
    coefficient applied (coef_mean; 0 on a skipped step) over the run and its first and last quarter."""
    rows = _rows([0.005] * 8, [0.3] * 8)
    for row, coef in zip(rows, [0.004, 0.002, 0.0, 0.0, 0.0, 0.0, 0.01, 0.024], strict=True):
        row["coef_mean"] = coef
    rows[2]["grad_norm"] = 0.0  # skipped: counts 0 whatever its plan said
    rows[2]["coef_mean"] = 0.5
    story = controller_story(rows)
    assert "; mean bonus on the tokens 0.005 (first quarter 0.003, last 0.017)" in story
    rows[3]["coef_mean"] = math.nan  # a row without the column: nothing said
    assert "mean bonus" not in controller_story(rows)


def test_the_coefficient_that_acted_reads_a_logged_row_and_a_written_one_alike() -> None:
    """One reader of a metrics row's bonus for the end-of-run line (floats as logged) and the benchmark
    readings (strings from metrics.csv): coef_mean, 0 on a skipped step, NaN without the column."""
    from entropyctl.trainer.run_dir import coefficient_acted

    assert coefficient_acted({"grad_norm": 0.7, "coef_mean": 0.004}) == 0.004
    assert coefficient_acted({"grad_norm": "0.7", "coef_mean": "0.004"}) == 0.004
    assert coefficient_acted({"grad_norm": 0.0, "coef_mean": 0.5}) == 0.0  # skipped for want of signal
    assert coefficient_acted({"grad_norm": "0.0", "coef_mean": "0.5"}) == 0.0
    assert coefficient_acted({"grad_norm": "", "coef_mean": "0.5"}) == 0.5  # no grad_norm: not skipped
    assert math.isnan(coefficient_acted({"grad_norm": "0.7"}))
    assert math.isnan(coefficient_acted({"grad_norm": "0.7", "coef_mean": ""}))


def test_a_skipped_step_is_read_alike_from_a_logged_row_and_a_written_one() -> None:
    """The SmolLM2 reading's count of skipped steps and the bonus reader share one test of a row."""
    from entropyctl.trainer.run_dir import coefficient_acted, step_skipped

    assert step_skipped({"grad_norm": 0.0}) and step_skipped({"grad_norm": "0.0"})
    assert not step_skipped({"grad_norm": 0.7}) and not step_skipped({"grad_norm": "1e-9"})
    assert not step_skipped({"grad_norm": ""}) and not step_skipped({})
    # the skipped column, where a row has one, decides: a step that trained may log grad_norm 0 (its
    # last mini-batch without a gradient) and still have put a bonus on other mini-batches' tokens
    assert not step_skipped({"grad_norm": 0.0, "skipped": 0.0}) and step_skipped({"skipped": "1.0"})
    assert step_skipped({"grad_norm": "0.0", "skipped": ""})  # a resumed run's older rows: grad_norm
    assert step_skipped({"grad_norm": 0.0, "skipped": math.nan})  # the same rows, as read_metrics reads them
    assert coefficient_acted({"grad_norm": "0.0", "skipped": "0.0", "coef_mean": "0.5"}) == 0.5


def test_after_a_resume_the_end_line_tells_the_whole_run(tmp_path: Path) -> None:
    """A run resumed at step 3 of 6: this process sees steps 4–6, the end-of-run line counts all six,
    the first three read back from the run's metrics.csv (a row after the resume step there, left by
    the interrupted process, is not counted twice)."""
    import csv
    from types import SimpleNamespace

    rows = _rows([0.0, 0.0, 0.0, 0.01, 0.02, 0.03], [0.5, 0.4, 0.3, 0.25, 0.2, 0.2])
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:4])  # step 4: written by the stopped process after its last checkpoint
    out = io.StringIO()
    progress = RLVRProgress(6, stream=out)
    module = SimpleNamespace(rlvr_step=3, run_dir=tmp_path, last_metrics={})
    trainer = SimpleNamespace(global_rank=0)
    progress.on_train_start(trainer, module)  # type: ignore[arg-type]
    for row in rows[3:]:
        module.last_metrics = row
        progress.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
    progress.on_train_end(trainer, module)  # type: ignore[arg-type]
    story = out.getvalue().splitlines()[-1]
    assert story == "[entropyctl] " + controller_story(rows)
    assert "α was 0 on 3/6 steps" in story and "entropy 0.500 -> 0.200" in story


def test_library_bars_drawn_with_tqdm_are_hidden_unless_verbose() -> None:
    """transformers draws its GGUF conversion bar with tqdm directly (no switch of its own): the CLI's
    quiet mode turns tqdm off before it is imported; without it (--verbose) the bar shows."""
    import os
    import subprocess
    import sys

    script = (
        "import io, sys\n"
        "from entropyctl.cli import _quiet_libraries\n"
        "if sys.argv[1] == 'quiet': _quiet_libraries()\n"
        "from tqdm.auto import tqdm\n"
        "out = io.StringIO()\n"
        "for _ in tqdm(range(3), desc='Converting and de-quantizing GGUF tensors...', file=out): pass\n"
        "print(len(out.getvalue()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    drawn = {
        mode: int(subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                 check=True).stdout)
        for mode in ("quiet", "verbose")
    }  # fmt: skip
    assert drawn["quiet"] == 0 and drawn["verbose"] > 0
