"""genlab serve at the HTTP level (Starlette's test client): every route, the refused paths and headers, error
cards for damaged runs, live updates of a training run, the controls of each family and the generation stream."""
import json
import os
import socket
import time

import pytest

from starlette.testclient import TestClient  # noqa: E402

from genlab.serve import check_port, create_app  # noqa: E402
from genlab.serve.live import Generations  # noqa: E402

from serve_runs import make_runs  # noqa: E402

HOSTS = ("testserver", "127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(root):
    return TestClient(create_app(root, hosts=HOSTS))


def sse(text):
    """The events of a server-sent-events body: [(event, data dict)]."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines.get("event"), json.loads(lines.get("data", "{}"))))
    return out


def test_pages_and_assets(client):
    for url, text in (("/", 'id="runs-table"'), ("/live", 'id="generate"'), ("/run/dif", 'id="loss-plot"'),
                      ("/static/app.js", "livePage"), ("/static/style.css", "badge")):
        r = client.get(url)
        assert r.status_code == 200 and text in r.text, url
    assert client.get("/run/nope").status_code == 404


def test_runs_list_statuses_and_error_cards(client):
    rows = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert {"dif", "pcnn", "cfg", "txt", "gan", "live", "dead", "broken", "cmp"} <= set(rows)
    assert rows["dif"]["status"] == "done" and rows["dif"]["method"] == "diffusion" and rows["dif"]["steps"] == 6
    assert rows["dif"]["best_val_loss"] is not None and rows["dif"]["data"] == "digits"
    assert rows["cfg"]["condition"] == "class" and rows["txt"]["condition"] == "text"
    assert rows["live"]["status"] == "running" and rows["dead"]["status"] == "interrupted"
    assert "config.yaml cannot be read" in rows["broken"]["error"]
    assert rows["cmp"]["kind"] == "report" and rows["cmp"]["data"] == "digits"


def test_run_page_data_and_live_updates(client, root):
    d = client.get("/api/run/dif").json()
    assert d["metrics"] and d["grids"] and d["grids"][-1]["path"] == "samples.png" and "method: diffusion" in d["config_text"]
    assert [g["step"] for g in d["grids"][:-1]] == [3]
    assert client.get(f"/files/dif/{d['grids'][0]['path']}").headers["content-type"] == "image/png"
    dead = client.get("/api/run/dead").json()
    assert any("error" in c for c in dead["checkpoint_list"])            # a half-written checkpoint
    # a run that is still training: records after the first LINES lines come with ?since=LINES
    with open(root / "live" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": 0.4, "time_used": 2.0}) + "\n" + '{"step": 5, "lo')   # a torn line
    first = client.get("/api/run/live").json()
    assert first["lines"] == 2                               # the torn third line is not counted yet
    u = client.get("/api/run/live?since=1").json()
    assert [r["step"] for r in u["metrics"]] == [4] and u["status"] == "running" and u["lines"] == 2
    # the torn line completes later, and a validation record of an earlier step comes after it: both arrive
    with open(root / "live" / "metrics.jsonl", "a") as f:
        f.write('ss": 0.3}\n' + json.dumps({"step": 4, "val_loss": 0.45}) + "\n"
                + json.dumps({"step": 6, "loss": float("inf"), "fid_matched_ratio": float("nan")}) + "\n")
    u2 = client.get(f"/api/run/live?since={u['lines']}").json()
    assert [(r["step"], sorted(r)) for r in u2["metrics"]][:2] == [(5, ["loss", "step"]), (4, ["step", "val_loss"])]
    assert u2["metrics"][2]["loss"] is None and u2["best_val_loss"] == 0.45          # inf / nan: null in JSON
    assert client.get("/api/run/live?since=x").status_code == 400
    assert client.get("/api/runs").status_code == 200


@pytest.mark.parametrize("path", ["/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files//etc/passwd",
                                  "/files/dif/..%2f..%2fsecret", "/files/link/passwd", "/files/dif/checkpoints/../../x",
                                  "/static/../app.py", "/static/%2e%2e/app.py", "/api/run/..%2f..", "/api/run//etc",
                                  "/api/options/../dif", "/run/%2e%2e", "/files/dif"])
def test_refused_paths(client, root, path, tmp_path_factory):
    if not (root / "link").exists():
        outside = tmp_path_factory.mktemp("outside")
        (outside / "passwd").write_text("secret")
        os.symlink(outside, root / "link")
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "secret" not in r.text and "root:" not in r.text


def test_host_and_origin_checks(root):
    c = TestClient(create_app(root))                       # only the local names
    h = {"host": "127.0.0.1:8000"}
    assert c.get("/api/runs", headers=h).status_code == 200
    assert c.get("/api/runs", headers={"host": "localhost:8000"}).status_code == 200
    assert c.get("/api/runs", headers={"host": "evil.example:8000"}).status_code == 403     # DNS rebinding
    assert c.get("/api/runs", headers={"host": "10.0.0.5:8000"}).status_code == 403
    assert c.get("/api/runs", headers={**h, "origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/runs", headers={**h, "origin": "http://127.0.0.1:9999"}).status_code == 403  # another port
    assert c.get("/api/runs", headers={**h, "origin": "http://127.0.0.1:8000"}).status_code == 200
    # an <img> or no-cors fetch from another page sends no Origin, but the browser marks it cross-site
    assert c.get("/api/generate?run=dif", headers={**h, "sec-fetch-site": "cross-site"}).status_code == 403
    assert c.get("/api/runs", headers={**h, "sec-fetch-site": "same-site"}).status_code == 403
    assert c.get("/api/runs", headers={**h, "sec-fetch-site": "same-origin"}).status_code == 200
    wild = TestClient(create_app(root, ip_literals=True))  # listening on 0.0.0.0: any IP address, still no names
    assert wild.get("/api/runs", headers={"host": "10.0.0.5:8000"}).status_code == 200
    assert wild.get("/api/runs", headers={"host": "evil.example:8000"}).status_code == 403


def test_read_only(client):
    for method in ("post", "put", "delete"):
        assert getattr(client, method)("/api/runs").status_code == 405


def test_controls_come_from_each_methods_options(client):
    dif = client.get("/api/options/dif").json()
    names = {o["name"]: o for o in dif["options"]}
    assert {"sampler", "steps", "eta", "guidance"} <= set(names) and names["sampler"]["type"] == "choice"
    assert names["steps"]["default"] == 20 and names["steps"]["type"] == "int"
    pcnn = client.get("/api/options/pcnn").json()
    assert {o["name"] for o in pcnn["options"]} >= {"temperature", "top_k"} and pcnn["family"] == "autoregressive"
    assert client.get("/api/options/cfg").json()["condition"]["class"]["count"] == 10
    assert "prompt" in client.get("/api/options/txt").json()["condition"]
    assert client.get("/api/options/gan").json()["options"] == []
    assert client.get("/api/options/broken").status_code == 422


@pytest.mark.parametrize("name,query,frames", [("dif", "&steps=20&sampler=ddim", 20), ("pcnn", "", 64),
                                               ("cfg", "&class=3&guidance=2&steps=10", 10),
                                               ("txt", "&prompt=a+red+circle&steps=4", 4), ("gan", "", 1)])
def test_generation_streams_frames(client, name, query, frames):
    r = client.get(f"/api/generate?run={name}&n=2&seed=1{query}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "queued" and "start" in kinds and kinds[-1] == "done", events[-1]
    got = [d for e, d in events if e == "frame"]
    assert len(got) >= min(frames, 10) and got[0]["png"].startswith("data:image/png;base64,")
    done = events[-1][1]
    assert done["nfe"] >= 1 and done["frames"] == frames


def test_generation_errors_are_events_not_500s(client):
    events = sse(client.get("/api/generate?run=dif&steps=0").text)
    assert events[-1][0] == "error" and "steps" in events[-1][1]["message"]
    events = sse(client.get("/api/generate?run=dif&k=3").text)
    assert events[-1][0] == "error" and "unknown option 'k'" in events[-1][1]["message"]
    events = sse(client.get("/api/generate?run=cfg&class=12").text)
    assert events[-1][0] == "error" and "class must be in 0..9" in events[-1][1]["message"]
    assert client.get("/api/generate?run=../etc").status_code == 404
    # a browser's EventSource gets a refusal as one error event it can show
    r = client.get("/api/generate?run=../etc", headers={"accept": "text/event-stream"})
    assert r.status_code == 200 and sse(r.text) == [("error", {"event": "error", "message": "no such run"})]


def test_busy_when_too_many_wait(root):
    gens = Generations(max_waiting=0)
    gens.pending = 2                        # two streams running already
    c = TestClient(create_app(root, hosts=HOSTS, generations=gens))
    r = c.get("/api/generate?run=dif")
    assert r.status_code == 429 and "try again" in r.json()["error"]


def test_port_in_use_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port("127.0.0.1", port)


def test_training_writes_its_status(root):
    st = json.loads((root / "dif" / "status.json").read_text())
    assert st["status"] == "done" and st["step"] == 6 and st["pid"] == os.getpid() and time.time() - st["heartbeat"] < 600
    assert "loss" in st["last"]


def test_a_waiting_generation_is_cancelled_when_its_browser_leaves(root):
    """A second generation waits while another holds the slot; its browser leaving (the cancel flag) ends it with
    'cancelled' before any sampling, and frees its place in the queue."""
    gens = Generations(max_waiting=1)
    gens.active, gens.active_streams = "someone-else", 1
    events, cancel = gens.start(root / "dif", {"pair": "mine"})
    assert events.get(timeout=5) == {"event": "queued"}
    cancel.set()
    assert events.get(timeout=5) == {"event": "cancelled"}
    assert events.get(timeout=5) is None and gens.pending == 0
