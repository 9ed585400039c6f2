"""Starting the service (serving/server.py and the serve verb): ports, a model that cannot load, forwarded
headers, memory of the ONNX session, and what is said without the server's dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent.serving.app import ServiceSettings  # noqa: E402

from .kit import TEXTS, assert_close, free_port, hosted, run, running  # noqa: E402


def test_serve_verb_passes_its_options_to_the_service(monkeypatch):
    import distilsent.serving.server as server
    from distilsent.cli import main

    seen = {}
    monkeypatch.setattr(server, "serve", lambda settings, **options: seen.update(settings=settings, **options))
    assert main(["serve", "--model", "m", "--backend", "onnx", "--workers", "2", "--port", "9000",
                 "--max-batch-tokens", "4096", "--max-wait-ms", "2.5"]) == 0
    assert seen["settings"] == ServiceSettings(
        model="m", backend="onnx", workers=2, port=9000, max_batch_tokens=4096, max_wait_ms=2.5
    )
    assert seen["settings"].host == "127.0.0.1" and seen["log_level"] == "info"


def test_without_the_server_dependencies_the_library_imports_and_serve_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"  # as if FastAPI were not installed
        "import distilsent\n"
        "from distilsent.cli import main\n"
        "assert 'distilsent.serving.app' not in sys.modules\n"
        "sys.exit(main(['serve']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "pip install 'distilsent[serve]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_rejects_out_of_range_ports_in_one_line(capsys):
    from distilsent.cli import main

    with pytest.raises(SystemExit) as exit:  # a usage error, as every verb's
        main(["serve", "--port", "99999"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and err.endswith("argument --port: expected a port from 1 to 65535, got '99999'")


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tiny_model_dir, capsys):
    import socket as sockets

    from distilsent.cli import main

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"distilsent: error: cannot listen on 127.0.0.1:{port}: the port is in use"


def test_serve_with_a_model_that_cannot_load_stops_with_one_line(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["serve", "--model", str(broken)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distilsent: error: "), lines


def test_serve_trusts_forwarded_headers_only_when_asked_and_guards_the_protocol(tiny_model_dir, monkeypatch):
    import uvicorn

    import distilsent.serving.server as server
    from distilsent.serving.protocol import GuardedHttp

    configs = []

    def record_and_close(self, sockets=None):
        configs.append(self.config)
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", record_and_close)
    server.serve(ServiceSettings(model=str(tiny_model_dir), port=free_port(), max_header_bytes=4096))
    server.serve(ServiceSettings(model=str(tiny_model_dir), port=free_port(), forwarded_allow_ips="10.0.0.1"))
    plain, proxied = configs
    assert plain.proxy_headers is False and proxied.proxy_headers is True and proxied.forwarded_allow_ips == "10.0.0.1"
    assert plain.http is GuardedHttp and plain.h11_max_incomplete_event_size == 4096
    assert plain.header_timeout == ServiceSettings().header_timeout


def test_a_request_of_max_request_texts_short_texts_is_served(clf):
    async def main():
        async with running(lambda: clf) as client:
            texts = [TEXTS[i % len(TEXTS)] for i in range(ServiceSettings().max_request_texts)]
            response = await client.post("/", json={"inputs": texts})
            assert response.status_code == 200, response.text
            assert_close(response.json(), hosted(clf, texts))

    run(main())


def test_the_onnx_session_keeps_no_memory_arena_after_a_large_batch(clf):
    # An arena keeps the largest batch's activations for the life of the process (a token bomb's peak).
    assert clf.backend.name == "onnx" and clf.backend.options.enable_cpu_mem_arena is False

