#!/usr/bin/env python3
"""Capture-mode probe: how fast can one headless-shell capture the Bench fixture, and where
does Chromium spend the CPU?  A side experiment for BENCHMARKS.md, not part of the service or
the tests (the service drives Chromium from Rust; this is a quicker bench to iterate on).

It serves fixtures/site itself, opens N tabs on `index.html#/Bench/0` (the fixture's preview
mode, which mounts the composition the way the render does), and captures frames with one of:

  shot   Page.captureScreenshot (what the service does); --beyond-viewport adds
         captureBeyondViewport: true, as Remotion sends it
  begin  HeadlessExperimental.beginFrame with a screenshot, under --enable-begin-frame-control;
         --serialize allows one beginFrame in flight across all tabs

It prints fps, the CPU of the whole machine per frame, and the CPU per Chromium thread.

    python3 -m venv /tmp/probe && /tmp/probe/bin/pip install websockets
    /tmp/probe/bin/python examples/capture_probe.py shot --tabs 1 --frames 90
"""

import argparse
import asyncio
import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

SITE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "site"
CLK = os.sysconf("SC_CLK_TCK")

# The service's own flags for headless-shell with the default `swangle` GL (src/browser/launch.rs),
# minus the ones that only matter for networking and media.
FLAGS = """--allow-pre-commit-input --disable-background-networking --disable-background-timer-throttling
--disable-backgrounding-occluded-windows --disable-breakpad --disable-dev-shm-usage --disable-hang-monitor
--disable-extensions --disable-ipc-flooding-protection --disable-renderer-backgrounding
--force-color-profile=srgb --mute-audio --no-first-run --headless=old --no-sandbox --use-gl=angle
--use-angle=swiftshader --enable-unsafe-swiftshader --disable-gpu-compositing --hide-scrollbars
--font-render-hinting=none --no-zygote""".split()


class Cdp:
    """One browser websocket; tabs are flattened sessions on it."""

    def __init__(self, ws, serialize_begin_frames):
        self.ws, self.next_id, self.pending = ws, 0, {}
        self.begin_frame_lock = asyncio.Lock() if serialize_begin_frames else None

    async def read(self):
        try:
            async for message in self.ws:
                reply = json.loads(message)
                waiter = self.pending.pop(reply.get("id"), None)
                if waiter:
                    waiter.set_result(reply)
        except websockets.ConnectionClosed as closed:
            for waiter in self.pending.values():
                waiter.set_exception(closed)

    async def call(self, method, params=None, session=None):
        if method == "HeadlessExperimental.beginFrame" and self.begin_frame_lock:
            async with self.begin_frame_lock:
                return await self._send(method, params, session)
        return await self._send(method, params, session)

    async def _send(self, method, params, session):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        waiter = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = waiter
        await self.ws.send(json.dumps(message))
        reply = await asyncio.wait_for(waiter, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


def machine_cpu_seconds():
    fields = open("/proc/stat").readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / CLK


def chromium_threads():
    """CPU seconds per (process kind, thread id, thread name) of every Chromium process."""
    threads = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "chromium" not in os.readlink(f"/proc/{pid}/exe"):
                continue
            cmdline = open(f"/proc/{pid}/cmdline").read()
            kind = next(
                (t for t in ("renderer", "gpu-process", "utility") if f"--type={t}" in cmdline),
                "browser",
            )
            for tid in os.listdir(f"/proc/{pid}/task"):
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                threads[(kind, tid, name)] = (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            continue
    return threads


async def probe(args, port):
    for _ in range(100):
        try:
            version = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version"))
            break
        except OSError:
            await asyncio.sleep(0.1)
    ws = await websockets.connect(version["webSocketDebuggerUrl"], max_size=2**30)
    cdp = Cdp(ws, args.serialize)
    reader = asyncio.create_task(cdp.read())
    begin = args.mode == "begin"

    async def evaluate(session, expression):
        result = await cdp.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        return result["result"].get("value")

    async def pump(session):
        # Under begin-frame control rAF only runs inside a BeginFrame. noDisplayUpdates keeps
        # the display untouched, so the first screenshot frame still has damage.
        if begin:
            await cdp.call("HeadlessExperimental.beginFrame", {"noDisplayUpdates": True}, session)

    sessions = []
    for _ in range(args.tabs):
        create = {"url": "about:blank", "width": 1920, "height": 1080}
        if begin:
            create["enableBeginFrameControl"] = True
        target = (await cdp.call("Target.createTarget", create))["targetId"]
        session = (
            await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        )["sessionId"]
        await cdp.call("Runtime.enable", None, session)
        await cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        await cdp.call(
            "Page.navigate", {"url": f"http://127.0.0.1:{args.http_port}/index.html#/Bench/0"}, session
        )
        sessions.append(session)
    ready = "!!document.getElementById('remotion-canvas') && window.remotion_renderReady === true"
    for session in sessions:
        for _ in range(600):
            await pump(session)
            if await evaluate(session, ready):
                break
            await asyncio.sleep(0.05)
        else:
            sys.exit("the Bench composition never became ready")

    no_damage = 0
    jpeg_bytes = 0

    async def capture(session, frame):
        nonlocal no_damage, jpeg_bytes
        await evaluate(session, f"window.remotion_setFrame({frame}, 'Bench', 1)")
        while not await evaluate(session, "window.remotion_renderReady === true"):
            await pump(session)
        if begin:
            result = await cdp.call(
                "HeadlessExperimental.beginFrame",
                {"screenshot": {"format": "jpeg", "quality": 80}},
                session,
            )
            if "screenshotData" not in result:
                no_damage += 1
                return
            data = result["screenshotData"]
        else:
            result = await cdp.call(
                "Page.captureScreenshot",
                {
                    "format": "jpeg",
                    "quality": 80,
                    "fromSurface": True,
                    "captureBeyondViewport": args.beyond_viewport,
                    "optimizeForSpeed": True,
                    "clip": {"x": 0, "y": 0, "width": 1920, "height": 1080, "scale": 1},
                },
                session,
            )
            data = result["data"]
        image = base64.b64decode(data)
        jpeg_bytes += len(image)
        if args.save:
            pathlib.Path(args.save, f"{frame:04}.jpg").write_bytes(image)

    next_frame = 0

    async def worker(session):
        nonlocal next_frame
        while next_frame < args.frames:
            frame = next_frame
            next_frame += 1
            await capture(session, frame)

    threads_before = chromium_threads()
    started, cpu_before = time.monotonic(), machine_cpu_seconds()
    await asyncio.gather(*(worker(s) for s in sessions))
    seconds, cpu = time.monotonic() - started, machine_cpu_seconds() - cpu_before
    threads_after = chromium_threads()
    reader.cancel()

    by_thread = {}
    for key, after in threads_after.items():
        kind, _tid, name = key
        by_thread[(kind, name)] = by_thread.get((kind, name), 0) + after - threads_before.get(key, 0)
    total = sum(by_thread.values()) or 1
    print(
        f"{args.mode}{' beyond-viewport' if args.beyond_viewport else ''}"
        f"{' serialized' if args.serialize else ''}, {args.tabs} tab(s): "
        f"{args.frames / seconds:.2f} fps, machine CPU {1000 * cpu / args.frames:.0f} ms per frame, "
        f"{jpeg_bytes / max(1, args.frames - no_damage) / 1024:.0f} KiB per JPEG, "
        f"{no_damage} frame(s) without damage"
    )
    print("Chromium CPU per frame, by process and thread:")
    for (kind, name), value in sorted(by_thread.items(), key=lambda kv: -kv[1]):
        if value * 1000 / args.frames >= 0.5:
            print(f"  {kind:12} {name:16} {1000 * value / args.frames:6.1f} ms  {100 * value / total:5.1f} %")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["shot", "begin"])
    parser.add_argument("--tabs", type=int, default=1)
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--beyond-viewport", action="store_true")
    parser.add_argument("--serialize", action="store_true")
    parser.add_argument("--save", help="write each JPEG into this directory")
    parser.add_argument("--browser", default="/usr/lib/chromium/chromium-headless-shell")
    parser.add_argument("--http-port", type=int, default=9334)
    parser.add_argument("--flags", default="", help="extra Chromium flags, space-separated")
    args = parser.parse_args()
    if args.save:
        os.makedirs(args.save, exist_ok=True)

    cdp_port = 9333
    flags = FLAGS + args.flags.split() + [f"--remote-debugging-port={cdp_port}"]
    if args.mode == "begin":
        flags += ["--enable-begin-frame-control", "--run-all-compositor-stages-before-draw"]
    profile = tempfile.TemporaryDirectory()
    log = open(os.path.join(profile.name, "chromium.log"), "w")
    browser = subprocess.Popen(
        [args.browser, *flags, f"--user-data-dir={profile.name}/data", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(args.http_port), "--bind", "127.0.0.1", "-d", str(SITE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(probe(args, cdp_port))
    except (RuntimeError, OSError, TimeoutError, websockets.ConnectionClosed) as error:
        print(f"{args.mode}, {args.tabs} tab(s): failed: {type(error).__name__} {error}")
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        server.kill()
        crashes = [l for l in open(log.name) if "overlapping" in l or "GPU process exited" in l]
        if crashes:
            print("Chromium log:", *(line.strip() for line in crashes[:3]), sep="\n  ")


if __name__ == "__main__":
    main()
