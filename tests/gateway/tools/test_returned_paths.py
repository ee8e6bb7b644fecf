"""The workspace paths fs tool calls returned (what ``answer.cite_sources`` lets an answer cite)."""

from __future__ import annotations

from corral.gateway.tools import returned_paths


def test_read_file_returns_its_path_normalised() -> None:
    assert returned_paths("fs.read_file", {"path": "./pkg/../pkg/core.py"}, "x") == ["pkg/core.py"]


def test_list_dir_returns_its_files_not_its_directories_nor_notes() -> None:
    output = "README.md\npkg/\nsetup.py\n[skipped_by_policy: 1 entry left out; ...]"
    assert returned_paths("fs.list_dir", {"path": "."}, output) == ["README.md", "setup.py"]
    assert returned_paths("fs.list_dir", {"path": "pkg/"}, "core.py\nsub/") == ["pkg/core.py"]


def test_search_text_returns_the_files_of_its_matches() -> None:
    output = (
        "pkg/core.py:1: def answer():\n"
        "pkg/core.py:2:     return 42\n"
        "README.md:3: answer: 42\n"
        "[stopped at max_results=3; more matches exist, narrow the query or the path]"
    )
    assert returned_paths("fs.search_text", {"query": "answer"}, output) == [
        "pkg/core.py",
        "README.md",
    ]
    assert returned_paths("fs.search_text", {"query": "x"}, "No matches for 'x' in '.'.") == []


def test_a_truncated_output_loses_its_last_line_and_paths_never_leave_the_root() -> None:
    assert returned_paths("fs.list_dir", {"path": "."}, "a.py\nb.p", truncated=True) == ["a.py"]
    assert returned_paths("fs.read_file", {"path": "../etc/passwd"}, "x") == []
    assert returned_paths("fs.read_file", {"path": "."}, "x") == []
    assert returned_paths("http.get", {"path": "a.py"}, "a.py") == []
