"""Pictures for the README: a real evaluation seen in a real MLflow UI, and the harness's plots.

    .venv/bin/python scripts/screenshots.py            # writes docs/images/*.png

1. builds a small BEIR dataset: a slice of ../shared/data/scifact-train (MLFLOW_RAG_SHARED_DATA)
   when it is there, else the sections of examples/docs with their headings as queries;
2. starts `mlflow server` on 127.0.0.1 (a free port, SQLite backend in a temporary directory);
3. runs evaluations/small.yaml on the dataset, logging to that server (one parent run, one
   child run per variant);
4. opens the MLflow UI's compare-runs page of the child runs in headless Chromium (driven
   over the DevTools protocol: the plot set to mode -> nDCG@10, parameters that differ) and
   saves docs/images/mlflow-compare.png;
5. downloads the parent run's plots (plots/*.png) into docs/images/.

Needs Chromium (Debian: `apt-get install chromium`); nothing is fetched from the network.
Not part of CI. The dataset helpers here are also used by tests/test_readme.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
EXPERIMENT = "small-grid"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


def shared_data_dir() -> Path:
    return Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


# --------------------------------------------------------------------------- small datasets


def scifact_slice(source: Path, dest: Path, *, queries: int = 40, corpus: int = 400,
                  split: str = "train") -> Path:
    """A small BEIR folder cut from a real one: the first ``queries`` judged queries, every
    document judged for them, and the first documents of the corpus up to ``corpus`` in all
    (the distractors). Deterministic: the same slice every time."""
    judged: dict[str, list[tuple[str, str]]] = {}
    with open(source / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            qid, doc_id, grade = line.rstrip("\n").split("\t")
            if qid in judged or len(judged) < queries:
                judged.setdefault(qid, []).append((doc_id, grade))
    relevant = {doc_id for pairs in judged.values() for doc_id, _ in pairs}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "qrels").mkdir(exist_ok=True)
    kept = 0
    with open(source / "corpus.jsonl", encoding="utf-8") as src, \
            open(dest / "corpus.jsonl", "w", encoding="utf-8") as out:
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in relevant or kept < corpus - len(relevant):
                out.write(line)
                kept += doc_id not in relevant
    with open(source / "queries.jsonl", encoding="utf-8") as src, \
            open(dest / "queries.jsonl", "w", encoding="utf-8") as out:
        for line in src:
            if json.loads(line)["_id"] in judged:
                out.write(line)
    with open(dest / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for qid, pairs in judged.items():
            for doc_id, grade in pairs:
                out.write(f"{qid}\t{doc_id}\t{grade}\n")
    return dest


def examples_dataset(dest: Path, *, split: str = "train") -> Path:
    """A tiny BEIR folder from examples/docs: each Markdown section is a document, and its
    heading is the query that should find it."""
    corpus, queries = [], []
    for path in sorted((REPO / "examples" / "docs").glob("*.md")):
        sections = path.read_text(encoding="utf-8").split("\n#")
        for i, section in enumerate(sections):
            heading, _, body = section.lstrip("#").strip().partition("\n")
            doc_id = f"{path.stem}-{i}"
            corpus.append({"_id": doc_id, "title": heading, "text": " ".join(body.split())})
            queries.append({"_id": f"q-{doc_id}", "text": heading.lower(), "metadata": {}})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "qrels").mkdir(exist_ok=True)
    (dest / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (dest / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (dest / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{d['_id']}\t{d['_id']}\t1\n" for d in corpus)
    )
    return dest


def small_dataset(dest: Path) -> tuple[Path, str]:
    """The SciFact slice when the shared data is there, else the examples; and its name."""
    scifact = shared_data_dir() / "scifact-train"
    if (scifact / "corpus.jsonl").is_file():
        return scifact_slice(scifact, dest / "scifact-slice"), "a slice of scifact-train"
    return examples_dataset(dest / "examples"), "the examples/docs sections"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, *, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"no answer from {url} after {timeout:.0f}s; see {log}")


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend in ``workdir``; stopped on exit."""
    port = free_port()
    log = workdir / "mlflow-server.log"
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "artifacts"), "--workers", "1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", timeout=180, process=process, log=log)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the server and its workers, nothing else
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]):
        found = shutil.which(name) if name else None
        if found:
            return found
    raise SystemExit("Chromium not found: install it (Debian: apt-get install chromium) "
                     "or pass --chromium PATH")


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    JSON messages separated by NUL bytes on file descriptors 3 and 4), so the standard library
    is enough: no websocket client, no Selenium or Playwright."""

    def __init__(self, binary: str, *, profile: Path, width: int, height: int) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def plug_pipes() -> None:  # in the child: its fd 3 reads our commands, fd 4 answers
            read, write = os.dup(to_child), os.dup(from_child)
            os.dup2(read, 3)
            os.dup2(write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            close_fds=False, preexec_fn=plug_pipes, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self._session: str | None = None
        target = str(self.send("Target.createTarget", {"url": "about:blank"})["targetId"])
        self._session = str(self.send("Target.attachToTarget",
                                      {"targetId": target, "flatten": True})["sessionId"])
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict[str, object] | None = None) -> dict[str, object]:
        self._id += 1
        message: dict[str, object] = {"id": self._id, "method": method, "params": params or {}}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise SystemExit(f"chromium exited during {method}")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise SystemExit(f"chromium: {method} failed: {reply['error']}")
                return dict(reply.get("result", {}))

    def js(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        inner = result.get("result")
        return inner.get("value") if isinstance(inner, dict) else None

    def wait_for_text(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"!!document.body && document.body.innerText.includes({json.dumps(text)})"):
                return
            time.sleep(0.5)
        raise SystemExit(f"the page never showed {text!r}")

    def click(self, selector: str) -> bool:
        return bool(self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " if (!e) return false; e.click(); return true; })()"))

    def choose(self, input_index: int, option: str, *, attempts: int = 5) -> None:
        """Pick ``option`` in the n-th search select of the page as a user would: type it (React
        sees real key events) and press Enter; checked, and tried again if it did not take."""
        selected = (
            "(() => { const box = document.querySelectorAll('input[type=search]')"
            f"[{input_index}].closest('.du-bois-light-select'); return !!box && [...box"
            ".querySelectorAll('[class*=selection-item-content]')].some(e => e.textContent"
            f".trim() === {json.dumps(option)}); }})()"
        )
        for _ in range(attempts):
            self.js("(() => { const e = document.querySelectorAll('input[type=search]')"
                    f"[{input_index}]; e.focus(); e.click(); }})()")
            time.sleep(1)
            self.send("Input.insertText", {"text": option})
            time.sleep(1.5)
            for key, code in (("Enter", 13), ("Escape", 27)):
                for kind in ("keyDown", "keyUp"):
                    self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key,
                                                         "windowsVirtualKeyCode": code})
                time.sleep(0.5)
            if self.js(selected):
                return
        raise SystemExit(f"could not select {option!r} in the comparison plot")

    def top_of(self, text: str) -> float | None:
        """Page y of the last element whose own text is ``text``."""
        value = self.js(
            "(() => { const found = [...document.querySelectorAll('*')].filter(e => "
            f"e.textContent.trim() === {json.dumps(text)} && e.childElementCount <= 1); "
            "return found.length ? found[found.length - 1].getBoundingClientRect().top : null; })()"
        )
        return float(value) if isinstance(value, (int, float)) else None

    def screenshot(self, path: Path, *, width: int, height: int) -> None:
        data = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        })["data"]
        path.write_bytes(base64.b64decode(str(data)))

    def close(self) -> None:
        with contextlib.suppress(SystemExit, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self._in)
        os.close(self._out)


def screenshot_comparison(binary: str, url: str, out: Path, *, workdir: Path,
                          run_names: list[str], metric: str) -> None:
    """The compare-runs page of the variants: the parallel coordinates plot set to mode ->
    ``metric``, the run details, the parameters that differ and the first metric rows."""
    width, height = 1280, 2200
    browser = Chromium(binary, profile=Path(tempfile.mkdtemp(prefix="chromium-", dir=workdir)),
                       width=width, height=height)
    try:
        browser.send("Page.navigate", {"url": url})
        browser.wait_for_text("Run details", timeout=120)
        for name in run_names:
            browser.wait_for_text(name, timeout=60)
        time.sleep(2)
        browser.click('button[aria-label="Close"]')  # the assistant side panel
        browser.click('button[data-testid="clear-button"]')  # the plot's default axes
        browser.choose(0, "mode")  # the plot's parameter axis
        browser.choose(1, metric)  # its metric axis
        browser.click('button[aria-label="Parameters - Show diff only"]')
        browser.js("document.activeElement && document.activeElement.blur()")
        time.sleep(2)
        bottom = browser.top_of("Artifacts")
        browser.screenshot(out, width=width, height=int(bottom) - 16 if bottom else height)
    finally:
        browser.close()


# --------------------------------------------------------------------------- main


def compare_url(server: str, experiment_id: str, run_ids: list[str]) -> str:
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids),
                                    "experiments": json.dumps([experiment_id])})
    return f"{server}/#/compare-runs?{query}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the PNGs go")
    parser.add_argument("--chromium", default=None, help="the Chromium binary")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mlflow import MlflowClient

    from mlflow_rag.eval_tracking import evaluate

    workdir = Path(tempfile.mkdtemp(prefix="mlflow-rag-screenshots-"))
    try:
        dataset, described = small_dataset(workdir / "data")
        print(f"dataset: {described} ({dataset})")
        with mlflow_server(workdir) as server:
            print(f"mlflow server: {server}")
            outcome = evaluate(dataset, variants=REPO / "evaluations" / "small.yaml",
                               split="train", experiment=EXPERIMENT, tracking_uri=server,
                               work_dir=workdir / "stores", progress=False,
                               run_name="small:scifact-slice")
            assert outcome.parent_run_id is not None
            client = MlflowClient(server)
            parent = client.get_run(outcome.parent_run_id)
            print(f"evaluation run {parent.info.run_id}: best {outcome.best.variant.label}")
            args.out.mkdir(parents=True, exist_ok=True)
            run_ids = list(outcome.child_run_ids.values())
            url = compare_url(server, parent.info.experiment_id, run_ids)
            target = args.out / "mlflow-compare.png"
            screenshot_comparison(chromium, url, target, workdir=workdir,
                                  run_names=list(outcome.child_run_ids), metric=outcome.metric)
            print(f"wrote {target} ({url})")
            plots = Path(client.download_artifacts(parent.info.run_id, "plots",
                                                   str(workdir / "download")))
            for png in sorted(plots.glob("*.png")):
                shutil.copy2(png, args.out / png.name)
                print(f"wrote {args.out / png.name}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
