"""Unit tests of the course machinery: lab generation, learner feedback, the checkpoint log."""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import json
import os
import pkgutil
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coursekit import checkpoint, checks, generate, report
from coursekit.__main__ import main
from coursekit.checks import LabCheckFailed, Section
from coursekit.labchecks import api_design, fastapi_basics, openai_format

ROOT = Path(__file__).resolve().parents[1]


# ---- the generator -----------------------------------------------------------------------------

def test_a_region_becomes_the_default_stub_at_its_indentation() -> None:
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    assert generate.strip_solutions(src) == "def f(x):\n    y = 1\n    ...  # TODO: your code here"


def test_stub_lines_replace_the_region() -> None:
    src = ("ROUTES = [\n    ### BEGIN SOLUTION\n    # STUB: # TODO: the routes\n    ('GET', '/v1/models'),\n"
           "    ### END SOLUTION\n]\n### BEGIN SOLUTION\n# STUB: def g():\n# STUB:     return None\n"
           "def g():\n    return 42\n### END SOLUTION")
    assert generate.strip_solutions(src) == "ROUTES = [\n    # TODO: the routes\n]\ndef g():\n    return None"


def test_code_outside_regions_and_blank_lines_are_kept_but_nbval_directives_go() -> None:
    src = "# NBVAL_CHECK_OUTPUT\nimport json\n\nprint(json.dumps({}))"
    assert generate.strip_solutions(src) == "import json\n\nprint(json.dumps({}))"
    assert generate.strip_solutions("# NBVAL_CHECK_OUTPUT", markdown=True) == "# NBVAL_CHECK_OUTPUT"


def test_markdown_regions_become_an_answer_placeholder() -> None:
    src = "Why POST?\n\n### BEGIN SOLUTION\nBecause it creates.\n### END SOLUTION"
    assert generate.strip_solutions(src, markdown=True) == "Why POST?\n\n*Your answer here.*"


@pytest.mark.parametrize("src, message", [
    ("x = 1\n### END SOLUTION", "line 2: '### END SOLUTION' without a matching"),
    ("### BEGIN SOLUTION\nx = 1", "line 1: '### BEGIN SOLUTION' is never closed"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "line 2: '### BEGIN SOLUTION' inside another"),
    ("# STUB: x = 1", "line 1: '# STUB:' outside a solution region"),
])
def test_unbalanced_markers_are_errors_that_name_the_place(src: str, message: str) -> None:
    with pytest.raises(generate.GenerationError, match=re.escape(message)) as info:
        generate.strip_solutions(src, where="demo.ipynb, cell 3")
    assert str(info.value).startswith("demo.ipynb, cell 3, line")


def _solution_notebook() -> dict:
    return {
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": ["# Lab\n", "[ch](../course/09-x.md)"]},
            {"cell_type": "code", "id": "ex", "metadata": {"tags": ["x"], "scrolled": True}, "execution_count": 3,
             "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}],
             "source": ["A = [\n", "    ### BEGIN SOLUTION\n", "    # STUB: # TODO\n", "    1,\n",
                        "    ### END SOLUTION\n", "]"]},
            {"cell_type": "code", "id": "chk", "metadata": {"tags": ["check"]}, "execution_count": 4,
             "outputs": [], "source": "# NBVAL_CHECK_OUTPUT\ncheck(A)"},
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python", "version": "3.11.7"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def test_the_lab_has_no_outputs_no_counts_and_locked_checks() -> None:
    lab = generate.lab_notebook(_solution_notebook(), name="solutions/09_x.ipynb")
    ex, chk = lab["cells"][1], lab["cells"][2]
    assert ex["outputs"] == [] and ex["execution_count"] is None
    assert "".join(ex["source"]) == "A = [\n    # TODO\n]"
    assert ex["metadata"] == {"tags": ["x"]}, "only tags survive: no view state from the author's session"
    assert chk["metadata"] == {"tags": ["check"], "editable": False, "deletable": False}
    assert "".join(chk["source"]) == "check(A)"
    assert lab["metadata"]["language_info"] == {"name": "python"}, "no author-specific Python version"
    assert lab["metadata"]["coursekit"]["generated_from"] == "solutions/09_x.ipynb"


def _write_solutions(folder: Path) -> Path:
    folder.mkdir()
    (folder / "09_x.ipynb").write_text(json.dumps(_solution_notebook()), encoding="utf-8")
    return folder


def test_generation_is_deterministic_and_check_mode_sees_drift(tmp_path: Path) -> None:
    solutions = _write_solutions(tmp_path / "solutions")
    first = generate.generate(solutions, tmp_path / "a")
    generate.generate(solutions, tmp_path / "b")
    assert [p.name for p in first.written] == ["09_x.ipynb"]
    assert (tmp_path / "a" / "09_x.ipynb").read_bytes() == (tmp_path / "b" / "09_x.ipynb").read_bytes()
    again = generate.generate(solutions, tmp_path / "a")
    assert again.written == [] and again.ok
    assert generate.generate(solutions, tmp_path / "a", check=True).ok

    lab = tmp_path / "a" / "09_x.ipynb"
    lab.write_text(lab.read_text().replace("# TODO", "A = [1]  # solved by hand"))
    stale = generate.generate(solutions, tmp_path / "a", check=True)
    assert not stale.ok and stale.stale[0][0] == lab
    assert "solved by hand" in stale.stale[0][1], "the report shows the diff"
    assert "solved by hand" in lab.read_text(), "check mode writes nothing"

    (tmp_path / "a" / "10_orphan.ipynb").write_text("{}")
    assert [p.name for p in generate.generate(solutions, tmp_path / "a").orphans] == ["10_orphan.ipynb"]


def test_cli_labs_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    solutions = _write_solutions(tmp_path / "solutions")
    labs = tmp_path / "labs"
    args = ["labs", "--solutions", str(solutions), "--labs", str(labs)]
    assert main(args + ["--check"]) == 1, "a missing lab is stale"
    assert main(args) == 0
    assert main(args + ["--check"]) == 0
    assert main(["labs", "check", "--solutions", str(solutions), "--labs", str(labs)]) == 0
    (labs / "09_x.ipynb").write_text("{}")
    assert main(args + ["--check"]) == 1
    assert "coursekit labs" in capsys.readouterr().err
    (solutions / "09_x.ipynb").write_text(json.dumps(_solution_notebook()).replace("### END SOLUTION", "x"))
    assert main(args) == 2
    assert "never closed" in capsys.readouterr().err


def test_the_committed_labs_pass_the_cli_check() -> None:
    assert main(["labs", "--check"]) == 0


# ---- learner feedback ----------------------------------------------------------------------------

def test_a_failed_check_says_what_hint_and_where_to_reread_without_a_traceback() -> None:
    error = LabCheckFailed("Route table", "2 of 6 routes are right", hint="GET reads",
                           section=Section("01-api-design", "Resources and methods"), details=["missing: x"])
    text = str(error)
    assert text.splitlines() == [
        "❌ Route table: 2 of 6 routes are right",
        "   • missing: x",
        "💡 Hint: GET reads",
        '📖 Reread: course/01-api-design.md, section "Resources and methods" '
        "(../course/01-api-design.md#resources-and-methods)",
    ]
    assert error._render_traceback_() == text.splitlines()


def test_slugs_match_mkdocs_anchors() -> None:
    assert checks.slugify("From llama.cpp to an OpenAI response") == "from-llamacpp-to-an-openai-response"
    assert checks.slugify("Résumé — the  error envelope!") == "resume-the-error-envelope"


def test_the_check_decorator_records_results_and_wraps_learner_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    section = Section("01-api-design", "Status codes")

    @checks.check("demo check", section=section, hint="try harder")
    def demo(value: object) -> str:
        if value == "crash":
            return {}["missing"]  # type: ignore[return-value]
        if value != 1:
            raise checks.Mismatch(f"value is {value!r}", details=["d"])
        return "demo passed"

    demo(1)
    assert capsys.readouterr().out == "✅ demo passed\n"
    assert checks.RESULTS["demo check"] is True
    with pytest.raises(LabCheckFailed) as info:
        demo(2)
    assert info.value.what == "value is 2" and info.value.hint == "try harder" and info.value.details == ["d"]
    assert checks.RESULTS["demo check"] is False
    with pytest.raises(LabCheckFailed, match="your code raised KeyError: 'missing'"):
        demo("crash")


def test_expecting_turns_asserts_and_errors_into_feedback(capsys: pytest.CaptureFixture[str]) -> None:
    section = Section("03-fastapi-basics", "Running it with uvicorn")
    with pytest.raises(LabCheckFailed, match="the list was empty"):
        with checks.expecting("client", section=section, hint="h"):
            assert [], "the list was empty"
    with pytest.raises(LabCheckFailed, match="ConnectionError: refused"):
        with checks.expecting("client", section=section, hint="h"):
            raise ConnectionError("refused")
    with checks.expecting("client", section=section, hint="h", success="it works"):
        pass
    assert capsys.readouterr().out == "✅ it works\n"


def test_schema_feedback_names_the_json_path_of_each_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert checks.verdict(openai_format.BROKEN_RESPONSE, "chat_completion_response") is None
    out = capsys.readouterr().out
    problems = checks.schema_problems(openai_format.BROKEN_RESPONSE, "chat_completion_response")
    assert out.splitlines()[1:] == [f"   • {p}" for p in problems]
    assert out.startswith(f"❌ not a valid chat_completion_response: {len(problems)} problems\n")
    assert any(p.startswith("choices[0].message.role:") for p in problems)
    assert any(p.startswith("usage:") for p in problems)
    assert any(p.startswith("created:") for p in problems)
    with pytest.raises(checks.Mismatch) as info:
        checks.require_schema(openai_format.BROKEN_RESPONSE, "chat_completion_response", what="RESPONSE")
    assert info.value.details == problems
    checks.verdict(None, "error")
    assert "$: expected an object, found null" in capsys.readouterr().out


def test_route_feedback_explains_methods_and_versions() -> None:
    good = list(api_design.EXPECTED_ROUTES)
    api_design.routes(good)
    wrong = [("POST", "/v1/models") if r == ("GET", "/v1/models") else r for r in good]
    with pytest.raises(LabCheckFailed) as info:
        api_design.routes(wrong)
    assert "5 of 6 routes are right" in info.value.what
    assert "POST /v1/models should be GET /v1/models: it only reads" in info.value.details
    unversioned = [("POST", "/chat/completions") if r == ("POST", "/v1/chat/completions") else r for r in good]
    with pytest.raises(LabCheckFailed) as info:
        api_design.routes(unversioned)
    assert info.value.section == api_design.VERSIONING
    assert "every API path carries its version" in info.value.details[0]
    with pytest.raises(LabCheckFailed, match="ROUTES is empty"):
        api_design.routes([])
    with pytest.raises(LabCheckFailed, match=r"missing: the route to create embeddings"):
        api_design.routes([r for r in good if "embeddings" not in r[1]])


def _envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _errors_table() -> dict:
    return {name: (status, _envelope(f"About {api_design.MESSAGE_WORDS[name][0]}.", type_, param, code))
            for name, (status, type_, param, code) in api_design.EXPECTED_ERRORS.items()}


def test_error_mapping_feedback_says_which_situation_and_why() -> None:
    api_design.errors(_errors_table())
    table = _errors_table()
    table["unknown_model"] = (400, _envelope("No gpt-4o.", "invalid_request_error", "model", "model_not_found"))
    with pytest.raises(LabCheckFailed) as info:
        api_design.errors(table)
    assert info.value.what == "7 of 8 situations are mapped right"
    assert info.value.details == [f"unknown_model: status 400 — {api_design.WHY['unknown_model']}"]
    table = _errors_table()
    table["queue_full"] = (429, {"error": {"message": "busy", "type": "rate_limit_error"}})
    with pytest.raises(LabCheckFailed) as info:
        api_design.errors(table)
    assert "the envelope of ERRORS['queue_full'] is not a valid error" in info.value.what
    assert info.value.details == ["error.code: required field is missing", "error.param: required field is missing"]


def test_lab1_expectations_are_the_reference_servers() -> None:
    from reference_server import Settings, create_app
    from reference_server import errors as ref
    from reference_server.backends.local import LocalBackend as Engine

    settings = Settings(embeddings=False)
    app = create_app(settings, backend=Engine(settings))
    routes = {(method.upper(), re.sub(r"\{[^}]*\}", "{id}", path))
              for path, operations in app.openapi()["paths"].items() for method in operations}
    later = {("POST", "/v1/responses"), ("GET", "/v1/responses/{id}"), ("DELETE", "/v1/responses/{id}"),
             ("GET", "/v1/responses/{id}/input_items"),  # chapter 9 adds the Responses API, after lab 1
             ("GET", "/v1/usage")}  # chapter 11: per-key usage
    # (chapter 10's other protocols are not in the OpenAI document: tests/test_ollama.py and its siblings)
    assert routes - later == set(api_design.EXPECTED_ROUTES) and later <= routes
    made = {
        "unknown_model": ref.model_not_found("gpt-4o"),
        "context_too_long": ref.context_length_exceeded(5000, 16, 2048, "messages"),
        "model_loading": ref.model_loading(),
        "queue_full": ref.queue_full(16),
        "invalid_temperature": ref.invalid_request("bad", param="temperature"),
    }
    for name, e in made.items():
        assert (e.status, e.type, e.param, e.code) == api_design.EXPECTED_ERRORS[name], name


def test_fix_check_catches_a_fix_that_changes_the_meaning() -> None:
    def lazy_fix(broken: dict) -> dict:
        return {"id": broken["id"], "object": "chat.completion", "created": 0, "model": broken["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    with pytest.raises(LabCheckFailed) as info:
        openai_format.fixed(lazy_fix)
    assert "usage should keep the counts" in " ".join(info.value.details)
    assert "1748779200" in " ".join(info.value.details)


def test_collect_check_refuses_a_response_that_ignores_meta_and_done() -> None:
    from typing import NamedTuple

    class Done(NamedTuple):
        finish_reason: str
        prompt_tokens: int
        completion_tokens: int

    def careless(events: Any, meta: dict) -> dict:
        text = "".join(e for e in events if isinstance(e, str)).strip()
        return {"id": "chatcmpl-" + os.urandom(4).hex(), "object": "chat.completion", "created": 0,
                "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "logprobs": None,
                "finish_reason": "stop", "message": {"role": "assistant", "content": text, "refusal": None}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    with pytest.raises(LabCheckFailed) as info:
        fastapi_basics.collecting(careless, Done)
    text = " ".join(info.value.details)
    assert "take it from meta" in text and "finish_reason should come from Done" in text
    assert "31 prompt tokens" in text


def _sections() -> list[Section]:
    import coursekit.labchecks as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"coursekit.labchecks.{info.name}")
        found += list(getattr(module, "SECTIONS", ()))
    return found


@pytest.mark.parametrize("section", _sections(), ids=lambda s: f"{s.chapter}#{s.anchor}")
def test_every_section_a_check_names_exists_in_its_chapter(section: Section) -> None:
    chapter = ROOT / section.path
    if not chapter.exists():
        pytest.skip(f"{section.path} is not written yet")
    headings = [checks.slugify(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$",
                                                                chapter.read_text(encoding="utf-8"), re.M)]
    assert section.anchor in headings, f"{section.path} has no heading {section.title!r}; feedback sends learners there"


# ---- the checkpoint log --------------------------------------------------------------------------

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_a_record_is_schema_valid_and_complete(tmp_path: Path) -> None:
    rec = checkpoint.make_record("03_fastapi_basics", observed={"reply": "Paris"}, tokens_per_s=61.234,
                                 n_ctx=1024, checks={"a": True, "b": False}, now=NOW)
    assert checkpoint.validate_record(rec) == []
    assert rec["time"] == "2025-06-01T12:00:00Z"
    assert rec["tokens_per_s"] == 61.23
    assert rec["checks"] == {"passed": ["a"], "failed": ["b"]}
    m = rec["machine"]
    assert m["cores"] >= 1 and m["python"].count(".") == 2 and re.fullmatch(r"[0-9a-f]{12}", m["id"])
    assert m["packages"]["llama-cpp-python"] and m["packages"]["fastapi"]
    assert "CPU" in m["llama_cpp"]["backends"] and m["llama_cpp"]["system_info"]
    model = rec["model"]
    assert model["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and model["n_ctx"] == 1024
    assert model["quantization"] == "Q4_1" and model["quantization_source"] == "gguf"
    assert re.fullmatch(r"[0-9a-f]{64}", model["sha256"]) and model["size_bytes"] > 50_000_000


def test_record_appends_one_validated_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sub" / "log.jsonl"
    monkeypatch.setenv(checkpoint.LOG_ENV, str(log))
    assert checkpoint.default_log() == log
    checkpoint.record("01_api_design", observed=[1], checks={})
    checkpoint.record("02_openai_format", observed=None, checks={"x": True})
    lines = log.read_text().splitlines()
    assert [json.loads(line)["lab"] for line in lines] == ["01_api_design", "02_openai_format"]
    assert "📝 checkpoint 02_openai_format recorded (1 checks passed)" in capsys.readouterr().out
    with pytest.raises(checkpoint.InvalidRecord, match=r"lab: 'Lab 1' does not match"):
        checkpoint.record("Lab 1", checks={})
    assert len(log.read_text().splitlines()) == 2, "an invalid record is never written"


def test_the_default_log_is_gitignored_at_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(checkpoint.LOG_ENV, raising=False)
    assert checkpoint.default_log() == ROOT / "checkpoints" / "checkpoints.jsonl"
    ignored = subprocess.run(["git", "check-ignore", "-q", "checkpoints/checkpoints.jsonl"], cwd=ROOT)
    assert ignored.returncode == 0


def test_machine_info_imports_on_its_own() -> None:
    code = ("import sys; from coursekit.checkpoint import machine_info; "
            "heavy = [m for m in ('fastapi', 'llama_cpp', 'reference_server', 'jsonschema') if m in sys.modules]; "
            "info = machine_info(); print(heavy, sorted(info))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    heavy, keys = out.strip().split("] ", 1)
    assert heavy == "[", f"importing coursekit.checkpoint pulled in {heavy}]"
    assert "'cpu_model'" in keys and "'llama_cpp'" in keys and "'packages'" in keys


def test_the_model_hash_is_cached_per_path_mtime_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(checkpoint.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    expected = real(b"abc").hexdigest()
    assert checkpoint.sha256_file(f) == expected and checkpoint.sha256_file(f) == expected
    assert len(calls) == 1
    f.write_bytes(b"xyz")
    os.utime(f, ns=(1, 1))
    assert checkpoint.sha256_file(f) == real(b"xyz").hexdigest()
    assert len(calls) == 2


def _gguf(path: Path, kvs: list[tuple[str, int, bytes]]) -> Path:
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, kind, value in kvs:
        body += string(key) + struct.pack("<I", kind) + value
    path.write_bytes(body)
    return path


def test_quantisation_comes_from_gguf_metadata_then_the_file_name(tmp_path: Path) -> None:
    array_of_strings = struct.pack("<IQ", 8, 2) + struct.pack("<Q", 1) + b"a" + struct.pack("<Q", 2) + b"bc"
    f = _gguf(tmp_path / "model.gguf", [("general.name", 8, struct.pack("<Q", 3) + b"abc"),
                                        ("tokenizer.tokens", 9, array_of_strings),
                                        ("general.file_type", 4, struct.pack("<I", 15))])
    assert checkpoint.quantization(f) == ("Q4_K_M", "gguf")
    named = _gguf(tmp_path / "tiny.Q8_0.gguf", [("general.name", 8, struct.pack("<Q", 1) + b"x")])
    assert checkpoint.quantization(named) == ("Q8_0", "filename")
    assert checkpoint.quantization(tmp_path / "missing.Q8_0.gguf") == ("Q8_0", "filename")
    (tmp_path / "weights.bin").write_bytes(b"nope")
    assert checkpoint.quantization(tmp_path / "weights.bin") == ("unknown", "unknown")
    from coursekit.model import embedded_model_path
    assert checkpoint.gguf_file_type(embedded_model_path()) == 3  # Q4_1


def test_system_info_is_parsed_into_backends_and_features() -> None:
    backends, features = checkpoint.parse_system_info(
        "CPU : SSE3 = 1 | AVX2 = 0 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 | ")
    assert backends == ["CPU", "CUDA"]
    assert features == {"SSE3": "1", "AVX2": "0", "ARCHS": "890", "USE_GRAPHS": "1"}


def _record(lab: str, *, tps: float | None, observed: object, python: str = "3.11.7", avx512: str = "1",
            ident: str = "aaaaaaaaaaaa", time: str = "2025-06-01T12:00:00Z", failed: tuple = ()) -> dict:
    rec = checkpoint.make_record(lab, observed=observed, tokens_per_s=tps, checks={"c": True}, now=NOW)
    rec = copy.deepcopy(rec)
    rec["time"] = time
    rec["machine"]["python"] = python
    rec["machine"]["id"] = ident
    rec["machine"]["llama_cpp"]["features"]["AVX512"] = avx512
    rec["checks"]["failed"] = list(failed)
    assert checkpoint.validate_record(rec) == []
    return rec


def _log(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_show_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path / "log.jsonl", [_record("01_api_design", tps=None, observed={"routes": 6}),
                                        _record("03_fastapi_basics", tps=60.5, observed={"reply": "Paris"},
                                                time="2025-06-01T12:05:00Z")])
    with log.open("a") as f:
        f.write("not json\n")
    assert main(["checkpoint", "show", str(log)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("time (UTC)"))
    assert ["time (UTC)", "lab", "machine", "quant", "model sha256", "tok/s", "checks", "observed"] == \
        re.split(r"\s{2,}", header)
    row = next(line for line in lines if "03_fastapi_basics" in line)
    assert "60.5" in row and "Q4_1" in row and '{"reply": "Paris"}' in row
    assert any(line.startswith("machine aaaaaaaaaaaa:") for line in lines)
    assert "log.jsonl:3: not JSON" in captured.err


def test_compare_shows_versions_cpu_flags_speed_ratio_and_differing_outputs(tmp_path: Path) -> None:
    mine = [_record("03_fastapi_basics", tps=30.0, observed={"reply": "Lyon", "raw": "x"}, python="3.12.1",
                    avx512="0", ident="bbbbbbbbbbbb")]
    ref = [_record("03_fastapi_basics", tps=60.0, observed={"reply": "Paris", "raw": "x"}),
           _record("01_api_design", tps=None, observed={})]
    text = report.compare(mine, ref)
    python_row = next(line for line in text.splitlines() if line.startswith("python"))
    assert "3.12.1" in python_row and "3.11.7" in python_row and python_row.endswith("≠")
    assert "llama.cpp CPU features only reference: AVX512" in text
    lab_row = next(line for line in text.splitlines() if line.startswith("03_fastapi_basics"))
    assert "0.50×" in lab_row and "differs (1)" in lab_row
    assert '03_fastapi_basics: reply: "Lyon"  vs reference  "Paris"' in text
    assert any(line.startswith("01_api_design") and "only reference" in line for line in text.splitlines())


def test_merge_gives_a_table_per_machine_and_a_room_summary(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    a = _log(tmp_path / "alice.jsonl", [_record("03_fastapi_basics", tps=40.0, observed="P", ident="aaaaaaaaaaaa")])
    b = _log(tmp_path / "bob.jsonl", [_record("03_fastapi_basics", tps=80.0, observed="Q", ident="bbbbbbbbbbbb",
                                              failed=("x",))])
    out = tmp_path / "room.jsonl"
    assert main(["checkpoint", "merge", str(a), str(b), str(a), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 records from 3 logs, 2 machines" in text
    assert text.count("machine aaaaaaaaaaaa:") == 1 and text.count("machine bbbbbbbbbbbb:") == 1
    room = next(line for line in text.splitlines() if line.startswith("03_fastapi_basics") and "–" in line)
    assert re.split(r"\s{2,}", room) == ["03_fastapi_basics", "2", "1", "60.0", "40.0–80.0", "2"]
    assert [json.loads(line)["tokens_per_s"] for line in out.read_text().splitlines()] == [40.0, 80.0]


def test_cli_reports_a_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoint", "show", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such log" in capsys.readouterr().err
    assert main(["checkpoint", "compare", str(tmp_path / "one.jsonl")]) == 2


def test_the_reference_log_covers_every_lab() -> None:
    records, problems = checkpoint.read_log(ROOT / "checkpoints" / "reference.jsonl")
    assert not problems, problems
    labs = {p.stem for p in (ROOT / "solutions").glob("*.ipynb")}
    missing = labs - {r["lab"] for r in records}
    assert not missing, (f"checkpoints/reference.jsonl has no record for {sorted(missing)}: run the solutions "
                         "with COURSE_CHECKPOINT_LOG=checkpoints/reference.jsonl and commit the new lines")
    assert all(not r["checks"]["failed"] for r in records)


def test_quiet_stderr_silences_c_level_output(capfd: pytest.CaptureFixture[str]) -> None:
    from coursekit.model import quiet_stderr

    with quiet_stderr():
        os.write(2, b"llama_model_loader: noise\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_the_checkpoint_schema_examples_are_valid_records() -> None:
    schema = json.loads(checkpoint.schema_path().read_text(encoding="utf-8"))
    assert schema["examples"], "the schema should show what a record looks like"
    for example in schema["examples"]:
        assert checkpoint.validate_record(example) == []
    broken = copy.deepcopy(schema["examples"][0])
    del broken["machine"]["cores"]
    broken["tokens_per_s"] = 0
    assert checkpoint.validate_record(broken) == [
        "machine: 'cores' is a required property",
        "tokens_per_s: 0 is not valid under any of the given schemas",
    ]


def test_cli_machine_prints_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["machine"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == checkpoint.machine_info()


def test_labs_model_id_is_what_the_server_serves():
    """The labs' checks send coursekit.model.MODEL_ID; the reference server must answer to it."""
    from coursekit.model import MODEL_ID
    from reference_server.settings import Settings

    assert Settings().served_model_id == MODEL_ID
