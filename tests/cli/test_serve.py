import pytest

from distilsent.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--backend", "onx"], "argument --backend: invalid choice: 'onx' (choose from 'onnx', 'torch')"),
    (["--long-text", "wndow"], "argument --long-text: invalid choice: 'wndow' (choose from 'truncate', 'head_tail', "
                               "'window')"),
    (["--aggregate", "median"], "argument --aggregate: invalid choice: 'median' (choose from 'mean', 'max')"),
    (["--port", "70000"], "argument --port: expected a port from 1 to 65535, got '70000'"),
    (["--port", "0"], "argument --port: expected a port from 1 to 65535, got '0'"),
])
def test_serve_usage_errors_exit_2_with_the_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", *argv])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"distilsent serve: error: {message}"


def test_serve_flags_are_the_settings_fields_with_their_defaults(monkeypatch):
    pytest.importorskip("fastapi")
    import distilsent.serving.server
    from distilsent.serving.settings import ServiceSettings

    served = []
    monkeypatch.setattr(distilsent.serving.server, "serve", lambda settings, log_level: served.append(settings))
    assert main(["serve"]) == 0
    assert main(["serve", "--port", "9000", "--max-wait-ms", "2.5", "--allowed-hosts", "a.example",
                 "--allowed-hosts", "b.example", "--long-text", "window"]) == 0
    assert served == [ServiceSettings(), ServiceSettings(port=9000, max_wait_ms=2.5, long_text="window",
                                                         allowed_hosts=("a.example", "b.example"))]
