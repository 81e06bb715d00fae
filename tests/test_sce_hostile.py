"""Hostile input to main_sce.py that would otherwise end in a traceback: a --demo_dir that is a file
(NotADirectoryError) and a --frames_fps of 0 (ZeroDivisionError in the frame-folder reader). Each is one ``error:``
line naming the problem, exit status 2, nothing written. Both run in this process (the CLI's own exit path)."""

import main_sce
from src.run.launch import cli
from tests.helpers import exits, one_line


def cli_run(argv, capsys):
    """``python main_sce.py argv`` in this process: (exit status, stdout, stderr)."""
    return exits(lambda: cli(main_sce.main, lambda: main_sce.parse_args(argv)), capsys)


def test_demo_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    for demo_dir, words in ((afile, "is a file"), (afile / "demo", f"lies under '{afile}', which is a file")):
        line = one_line(*cli_run(["--demo", "--demo_dir", str(demo_dir), "--dump_path", str(tmp_path / "run")],
                                 capsys))
        assert f"demo data folder '{demo_dir}' {words}" in line and "pass a folder" in line, line
    assert afile.read_text() == "not a folder" and not (tmp_path / "run").exists()  # nothing written


def test_frames_fps_zero_is_refused_at_parse_time(tmp_path, capsys):
    argv = ["--modality", "video", "--data_path", str(tmp_path / "videos"), "--arch", "r3d_tiny",
            "--dump_path", str(tmp_path / "run")]
    for bad in ("0", "-30"):
        line = one_line(*cli_run(argv + ["--frames_fps", bad], capsys))
        assert "--frames_fps" in line and f"must be > 0, got {bad}" in line, line
    assert not (tmp_path / "run").exists()
    assert main_sce.parse_args(argv + ["--frames_fps", "25"]).frames_fps == 25.0
