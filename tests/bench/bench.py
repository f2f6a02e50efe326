"""spbridge benchmarks: cold start, warm path, refresh at scale, size. Run by `bash scripts/bench`.

Everything runs side by side in one run against one tenant emulator (TLS, 127.0.0.1) and one
moto server, with release builds of the functions under a minimal Lambda Runtime API
(runtime_api.py). moto is tests/support/moto_server.py, which times its own answers; the timed
runs talk to it directly, and only the runs that count AWS calls (or inject latency) go through
the counting proxy (aws_proxy.py).
"""
import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
import zipfile

import boto3
import botocore.exceptions
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from aws_proxy import AwsProxy  # noqa: E402
from runtime_api import RuntimeApi  # noqa: E402

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MIB = 1024 * 1024
REGION = "us-east-1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ms(seconds):
    return seconds * 1000.0


def spread(values):
    """median, min, max of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def fmt_spread(values, unit=" ms", digits=1):
    med, lo, hi = spread(values)
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def peak_rss(pid):
    """A live process's peak RSS in MiB (VmHWM). Not ru_maxrss: on Linux that also counts the
    high-water mark of the forked copy of this (Python) process before exec."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid):
    """User + system CPU time a live process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    """The emulator, moto, the proxy, the AWS resources and the secrets the functions read."""

    def __init__(self, bin_dir, workdir):
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.procs = []
        self.functions = []  # function processes started; killed on the way out, even after a failure
        self.connections = 0  # delegated connections seeded so far (each refresh run lists them all)
        info_path = os.path.join(workdir, "emulator.json")
        state = os.path.join(workdir, "emulator")
        os.makedirs(state)
        out = open(info_path, "w")
        self.emulator_proc = subprocess.Popen(
            [os.path.join(bin_dir, "tenant-emulator"), "--port", "0", "--tls", "--state-dir", state],
            stdout=out, stderr=open(os.path.join(workdir, "emulator.log"), "w"))
        self.procs.append(self.emulator_proc)
        for _ in range(200):
            if os.path.getsize(info_path) > 0:
                break
            time.sleep(0.05)
        time.sleep(0.05)
        self.info_path = info_path
        self.info = json.load(open(info_path))
        self.ca = self.info["ca_pem_path"]
        # requests lets REQUESTS_CA_BUNDLE override a session's `verify`; make them agree.
        os.environ["REQUESTS_CA_BUNDLE"] = self.ca
        self.http = requests.Session()
        self.http.verify = self.ca

        moto_port = free_port()
        # The tests' moto: DynamoDB and Secrets Manager serialized as the services are, secret
        # lookups by name without a scan of all 10,000, and its own time per request.
        self.moto_proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "support", "moto_server.py"), "-H", "127.0.0.1",
             "-p", str(moto_port)],
            stdout=open(os.path.join(workdir, "moto.log"), "w"), stderr=subprocess.STDOUT)
        self.procs.append(self.moto_proc)
        self.moto = f"http://127.0.0.1:{moto_port}"
        for _ in range(200):
            try:
                requests.get(f"{self.moto}/moto-api/", timeout=1)
                break
            except requests.RequestException:
                self.alive()
                time.sleep(0.1)
        self.moto_http = requests.Session()
        self.proxy = AwsProxy(self.moto)
        # A second proxy for upload-worker in the warm runs, so each function's calls are apart.
        self.worker_proxy = AwsProxy(self.moto)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION)
        self.aws = {s: boto3.client(s, endpoint_url=self.moto) for s in ("dynamodb", "sqs", "s3", "secretsmanager")}
        self.create_resources()
        self.seed_secrets()

    def create_resources(self):
        ddb, sqs, s3 = self.aws["dynamodb"], self.aws["sqs"], self.aws["s3"]
        ddb.create_table(TableName="spbridge-jobs", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "job", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "job", "KeyType": "HASH"}])
        dlq = sqs.create_queue(QueueName="spbridge-jobs-dlq")["QueueUrl"]
        self.dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue = sqs.create_queue(QueueName="spbridge-jobs", Attributes={
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": self.dlq_arn, "maxReceiveCount": "5"})})["QueueUrl"]
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket="spbridge-staging")

    def put_secret(self, name, value):
        self.aws["secretsmanager"].create_secret(Name=name, SecretString=json.dumps(value))

    def seed_secrets(self):
        i = self.info
        entra = next(a for a in i["entra_apps"] if a["name"] == "entra-app")
        acs = next(a for a in i["acs_apps"] if a["name"] == "acs-app")
        site = i["sites"][0]
        library = site["libraries"][0]
        self.library_path = library["server_relative_url"]
        self.put_secret("spbridge/app", {
            "client_id": entra["client_id"],
            # Delegated refreshes authenticate with the secret; app-only Graph uses the certificate.
            "client_secret": entra["client_secret"],
            "certificate_pem": entra["certificate_pem"],
            "private_key_pem": entra["private_key_pem"],
            "tenant_id": i["tenant_id"],
            "state_signing_key": base64.b64encode(os.urandom(32)).decode(),
        })
        self.put_secret("spbridge/webhook", {"secrets": [WHSEC]})
        self.put_secret("spbridge/apps/acs", {
            "client_id": acs["client_id"], "client_secret": acs["client_secret"], "realm": i["realm"],
        })
        # SharePoint REST through ACS (the Office365-REST-Python-Client peer's path) and Graph
        # through the Entra certificate (the MSAL peer's path).
        self.put_secret("spbridge/connections/bench-sp", {
            "provider": "acs", "auth": "app_only", "realm": i["realm"], "app_secret": "spbridge/apps/acs",
            "target": {"kind": "sharepoint", "site_url": site["url"],
                       "library": library["server_relative_url"].rsplit("/", 1)[-1], "base_folder": "bench-sp"},
            "status": "active", "generation": 1,
        })
        self.put_secret("spbridge/connections/bench-graph", {
            "provider": "entra", "auth": "app_only", "tenant_id": i["tenant_id"],
            "target": {"kind": "drive", "drive_id": library["drive_id"], "base_folder": "bench-graph"},
            "status": "active", "generation": 1,
        })
        for c in ("bench-sp", "bench-graph"):
            self.put_secret(f"spbridge/senders/{c}", {"webhook_secrets": [WHSEC]})

    def function_env(self, name, aws_endpoint):
        base = self.info["base_url"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPBRIDGE_", "AWS_LAMBDA"))}
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "bench", "AWS_ENDPOINT_URL": aws_endpoint,
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "SPBRIDGE_SECRET_BACKEND": "aws", "SPBRIDGE_EXTRA_CA_PEM": self.ca,
            "SPBRIDGE_ACS_URL": f"{base}/acs", "SPBRIDGE_LOGIN_URL": f"{base}/login",
            "SPBRIDGE_LIVE_URL": f"{base}/live", "SPBRIDGE_GRAPH_URL": f"{base}/graph",
            "SPBRIDGE_DISCOVERY_URL": f"{base}/discovery",
            "SPBRIDGE_JOBS_TABLE": "spbridge-jobs", "SPBRIDGE_STAGING_BUCKET": "spbridge-staging",
            "SPBRIDGE_JOB_QUEUE_URL": self.queue, "SPBRIDGE_DEAD_LETTER_QUEUE_ARN": self.dlq_arn,
            "SPBRIDGE_INGEST_BASE_URL": "https://bench.example/upload-ingest",
            "SPBRIDGE_PUBLIC_BASE_URL": "https://bench.example/oauth-callback",
            "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"),
        })
        return env

    def alive(self):
        """Raises, with the end of its log, if moto or the emulator has exited."""
        for name, proc, log in (("moto", self.moto_proc, "moto.log"),
                                ("tenant emulator", self.emulator_proc, "emulator.log")):
            if proc.poll() is not None:
                with open(os.path.join(self.workdir, log), errors="replace") as f:
                    tail = "".join(f.readlines()[-30:])
                raise RuntimeError(f"{name} exited with status {proc.returncode}; the end of its log:\n{tail}")

    def moto_time(self):
        """Seconds moto spent answering since the last reset (time with a request in progress)."""
        return self.moto_http.get(f"{self.moto}/_spbridge/moto-time", timeout=10).json()["busy_s"]

    def reset_moto_time(self):
        """Zeroes moto's time once the requests of the previous step have ended (a request can
        still be finishing in moto after its caller has the answer)."""
        for _ in range(100):
            if self.moto_http.get(f"{self.moto}/_spbridge/moto-time", timeout=10).json()["active"] == 0:
                break
            time.sleep(0.001)
        self.moto_http.delete(f"{self.moto}/_spbridge/moto-time", timeout=10)

    def counts(self):
        return self.http.get(f"{self.info['base_url']}/_emulator/requests", timeout=10).json()

    def reset_counts(self):
        self.http.delete(f"{self.info['base_url']}/_emulator/requests", timeout=10)
        self.proxy.reset()
        self.worker_proxy.reset()

    def stored_size(self, name):
        """The size of the stored file called `name`, wherever the connection put it."""
        items = self.http.get(f"{self.info['base_url']}/_emulator/files", timeout=30).json()
        sizes = [i["size"] for i in items if i["path"].endswith("/" + name) and not i["is_folder"]]
        return sizes[0] if len(sizes) == 1 else None

    def close(self):
        # Functions first: one left running would go on calling moto after it is gone.
        for f in self.functions:
            if f.proc is not None and f.proc.poll() is None:
                f.proc.kill()
                f.proc.wait()
        self.proxy.close()
        self.worker_proxy.close()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


class Function:
    """A fresh process of a release function binary under its own Runtime API."""

    def __init__(self, stack, binary, aws_endpoint):
        self.api = RuntimeApi(f"arn:aws:lambda:{REGION}:123456789012:function:{binary}")
        self.api.alive = self.alive
        self.stack = stack
        stack.functions.append(self)
        env = stack.function_env(binary, aws_endpoint)
        env["AWS_LAMBDA_RUNTIME_API"] = self.api.address
        self.binary = os.path.join(stack.bin_dir, binary)
        self.env = env
        self.proc = None

    def alive(self):
        """Raises if this process, moto or the emulator has exited (so a wait ends at once)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{os.path.basename(self.binary)} exited with status {self.proc.returncode} "
                               "before answering (BENCH_LOGS=1 shows its output)")
        self.stack.alive()

    def start_with(self, event, timeout=120):
        """Queues the first event, then starts the process: (answer, seconds from exec to answer).
        Afterwards `init` is exec to the first poll, `harness` the runtime API's own share."""
        request_id = self.api.queue(event)
        t0 = time.perf_counter()
        logs = None if os.environ.get("BENCH_LOGS") else subprocess.DEVNULL
        self.proc = subprocess.Popen([self.binary], env=self.env, stdout=logs, stderr=logs)
        kind, body, at = self.api.wait(request_id, timeout)
        self.harness = self.api.harness_s(request_id)
        # Init: exec to the runtime's first poll (config, SDK clients); the rest is the handler.
        self.init = self.api.first_poll - t0
        return kind, body, at - t0

    def invoke(self, event):
        return self.api.invoke(event)

    def stop(self):
        """Kills the process; its peak RSS in MiB."""
        rss = peak_rss(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.api.close()
        return rss


def upload_event(connection, name, body):
    msg_id = f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()))
    key = base64.b64decode(WHSEC[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    path = f"/upload/{connection}"
    query = urllib.parse.urlencode({"name": name})
    return {
        "version": "2.0", "routeKey": "POST /upload/{connection}", "rawPath": path, "rawQueryString": query,
        "headers": {
            "host": "bench.example", "content-type": "application/octet-stream",
            "content-length": str(len(body)), "x-forwarded-proto": "https",
            "webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        },
        "queryStringParameters": {"name": name},
        "pathParameters": {"connection": connection},
        "requestContext": {
            "accountId": "123456789012", "apiId": "bench", "domainName": "bench.example", "domainPrefix": "bench",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "bench"},
            "requestId": str(uuid.uuid4()), "routeKey": "POST /upload/{connection}", "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
    }


def sqs_event(stack, expected=1):
    """Takes the queued job messages off the queue as Lambda's event source mapping would."""
    records = []
    deadline = time.time() + 30
    while len(records) < expected and time.time() < deadline:
        r = stack.aws["sqs"].receive_message(QueueUrl=stack.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                             AttributeNames=["All"], MessageAttributeNames=["All"])
        for m in r.get("Messages", []):
            records.append({
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m.get("Attributes", {}), "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                "eventSourceARN": stack.queue_arn, "awsRegion": REGION,
            })
    if len(records) < expected:
        raise RuntimeError(f"{len(records)} job messages queued, {expected} expected")
    return {"Records": records}


def check_accepted(kind, body):
    if kind != "response" or body.get("statusCode") != 202:
        raise RuntimeError(f"upload-ingest answered {kind}: {str(body)[:500]}")


def check_worked(kind, body):
    if kind != "response" or body.get("batchItemFailures"):
        raise RuntimeError(f"upload-worker answered {kind}: {str(body)[:500]}")


# ---------------------------------------------------------------- cold start

def cold_spbridge(stack, connection, body):
    """One fresh upload-ingest (202) then one fresh upload-worker (job done), talking to moto
    directly. Per function: time, peak RSS, init, moto's own time, the runtime API's own time."""
    name = f"cold-{uuid.uuid4().hex[:8]}.bin"
    out = {}
    for fn, event, check in (("ingest", upload_event(connection, name, body), check_accepted),
                             ("worker", None, check_worked)):
        f = Function(stack, f"upload-{fn}", stack.moto)
        event = event or sqs_event(stack)
        stack.reset_moto_time()
        kind, answer, t = f.start_with(event)
        check(kind, answer)
        out.update({fn: t, f"moto_{fn}": stack.moto_time(), f"h_{fn}": f.harness, f"init_{fn}": f.init})
        out[f"rss_{fn}"] = f.stop()
    size = stack.stored_size(name)
    if size != len(body):
        raise RuntimeError(f"{connection}: stored {size} bytes, sent {len(body)}")
    return out


def peer(stack, script, uploads):
    """A fresh Python process: seconds to each upload done, and its peak RSS."""
    env = dict(os.environ, REQUESTS_CA_BUNDLE=stack.ca)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, os.path.join(HERE, script), stack.info_path, str(uploads)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    times = []
    first = True
    rss = None
    for line in p.stdout:
        if line.startswith("peak_rss_kib "):
            rss = int(line.split()[1]) / 1024.0
        elif line.startswith("done "):
            if first:
                times.append(time.perf_counter() - t0)
                first = False
            else:
                times.append(float(line.split()[1]))
    err = p.stderr.read()
    p.wait()
    if len(times) != uploads or rss is None:
        raise RuntimeError(f"{script}: {len(times)} of {uploads} uploads done: {err[-2000:]}")
    return times, rss


def cold_start(stack, runs):
    body = os.urandom(MIB)
    res = {f"{p}_{k}": [] for p in ("sp", "g") for k in (
        "ingest", "worker", "rss_ingest", "rss_worker", "init_ingest", "init_worker",
        "moto_ingest", "moto_worker", "h_ingest", "h_worker")}
    res.update({k: [] for k in ("o365", "o365_rss", "msal", "msal_rss")})
    # A throwaway round first: page cache, moto's first-request imports, the emulator's first TLS.
    cold_spbridge(stack, "bench-sp", body)
    peer(stack, "peer_office365.py", 1)
    for _ in range(runs):
        for c, p in (("bench-sp", "sp"), ("bench-graph", "g")):
            for k, v in cold_spbridge(stack, c, body).items():
                res[f"{p}_{k}"].append(v)
        (t,), rss = peer(stack, "peer_office365.py", 1)
        res["o365"].append(t); res["o365_rss"].append(rss)
        (t,), rss = peer(stack, "peer_msal.py", 1)
        res["msal"].append(t); res["msal_rss"].append(rss)
    return res


# ---------------------------------------------------------------- warm path

def per_upload(counter, n):
    return ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(counter.items()) if v)


def warm_run(stack, connection, uploads, body, counted):
    """One upload-ingest and one upload-worker process, warmed up, then `uploads` uploads."""
    ingest = Function(stack, "upload-ingest", stack.proxy.url if counted else stack.moto)
    worker = Function(stack, "upload-worker", stack.worker_proxy.url if counted else stack.moto)
    # Warm-up: each process's cold start and first upload (token fetched and cached).
    kind, answer, _ = ingest.start_with(upload_event(connection, "warmup.bin", body))
    check_accepted(kind, answer)
    kind, answer, _ = worker.start_with(sqs_event(stack))
    check_worked(kind, answer)
    stack.reset_counts()
    out = {k: [] for k in ("ingest", "worker", "moto_ingest", "moto_worker", "h_ingest", "h_worker")}
    cpu_i, cpu_w = cpu_seconds(ingest.proc.pid), cpu_seconds(worker.proc.pid)
    for i in range(uploads):
        for fn, f, check in (("ingest", ingest, check_accepted), ("worker", worker, check_worked)):
            event = (upload_event(connection, f"warm-{uuid.uuid4().hex[:8]}.bin", body) if fn == "ingest"
                     else sqs_event(stack))
            stack.reset_moto_time()
            kind, answer, t, harness = f.invoke(event)
            check(kind, answer)
            out[fn].append(t)
            out[f"moto_{fn}"].append(stack.moto_time())
            out[f"h_{fn}"].append(harness)
    out["cpu_ingest"] = (cpu_seconds(ingest.proc.pid) - cpu_i) / uploads
    out["cpu_worker"] = (cpu_seconds(worker.proc.pid) - cpu_w) / uploads
    if counted:
        out["aws"] = stack.proxy.snapshot()[0]
        out["worker_aws"] = stack.worker_proxy.snapshot()[0]
        out["microsoft"] = stack.counts()
    out["rss_ingest"], out["rss_worker"] = ingest.stop(), worker.stop()
    return out


def warm_path(stack, uploads, counted_uploads):
    body = os.urandom(MIB)
    out = {}
    for connection in ("bench-sp", "bench-graph"):
        out[connection] = warm_run(stack, connection, uploads, body, counted=False)
        counted = warm_run(stack, connection, counted_uploads, body, counted=True)
        out[connection].update({k: counted[k] for k in ("aws", "worker_aws", "microsoft")})
    for script in ("peer_office365.py", "peer_msal.py"):
        stack.reset_counts()
        times, rss = peer(stack, script, uploads + 1)
        c = stack.counts()
        # The first upload fetched the token; count the warm ones only.
        c["token"] = c.get("token", 0) - 1
        out[script] = {"times": times[1:], "rss": rss, "microsoft": c}
    return out


# ---------------------------------------------------------------- refresh at scale

def mint_refresh_tokens(stack, n):
    """n delegated sign-ins through the emulator's authorize and token endpoints."""
    i = stack.info
    app = next(a for a in i["entra_apps"] if a["name"] == "entra-app")
    user = i["users"][0]["upn"]
    authorize = f"{i['login']}/{i['tenant_id']}/oauth2/v2.0/authorize"
    token = f"{i['login']}/{i['tenant_id']}/oauth2/v2.0/token"

    def one(_):
        s = requests.Session()
        s.verify = stack.ca
        r = s.get(authorize, params={
            "client_id": app["client_id"], "response_type": "code", "redirect_uri": app["redirect_uri"],
            "scope": "Files.ReadWrite offline_access", "login_hint": user, "state": "bench",
        }, allow_redirects=False, timeout=30)
        code = urllib.parse.parse_qs(urllib.parse.urlparse(r.headers["location"]).query)["code"][0]
        t = s.post(token, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": app["redirect_uri"],
            "client_id": app["client_id"], "client_secret": app["client_secret"],
            "scope": "Files.ReadWrite offline_access",
        }, timeout=30).json()
        return t["refresh_token"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def refresh_at_scale(stack, n, latency_ms, tag):
    t0 = time.perf_counter()
    tokens = mint_refresh_tokens(stack, n)
    sm = stack.aws["secretsmanager"]

    def seed(k):
        name = f"spbridge/connections/{tag}{k:05d}"
        value = json.dumps({
            "provider": "entra", "auth": "delegated", "tenant_id": stack.info["tenant_id"],
            "target": {"kind": "drive", "drive_id": "me"}, "scopes": ["Files.ReadWrite", "offline_access"],
            "status": "active", "generation": 1, "refresh_token": tokens[k],
        })
        # moto answers some concurrent CreateSecret calls with a 500 (sometimes after storing
        # the secret): retry, and count an existing secret with this value as done.
        for attempt in range(8):
            try:
                sm.create_secret(Name=name, SecretString=value)
                return attempt
            except botocore.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code == "ResourceExistsException":
                    if sm.get_secret_value(SecretId=name)["SecretString"] != value:
                        raise
                    return attempt
                if status < 500:
                    raise
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"could not create {name} after 8 tries")

    # Four at a time, each retried on moto's 500s (one at a time took ~35 ms a secret).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        retried = sum(1 for r in pool.map(seed, range(n)) if r)
    if retried:
        print(f"  seeding: {retried} of {n} secrets needed a retry after a moto 500", flush=True)
    setup = time.perf_counter() - t0
    # 50 ms on the token endpoint (an emulator fault rule) and on Secrets Manager (the proxy).
    if latency_ms:
        stack.http.post(f"{stack.info['base_url']}/_emulator/faults",
                        json={"path_prefix": "/login/", "kind": "latency", "ms": latency_ms}, timeout=10)
    stack.proxy.latency_ms["secretsmanager"] = latency_ms
    stack.reset_counts()
    fn = Function(stack, "token-refresh", stack.proxy.url)
    event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
             "account": "123456789012", "time": "2026-12-01T00:00:00Z", "region": REGION,
             "resources": [], "detail": {}}
    # Paced at 20 a second, n due connections take n/20 s at least, and every stored connection
    # is listed and read (moto answers those slowly on a loaded machine): allow about twice
    # that, up to Lambda's 900 s, past which a real run would have been stopped.
    stack.connections += n
    kind, body, wall = fn.start_with(event, timeout=min(900, 120 + (n + stack.connections) / 20))
    rss = fn.stop()
    stack.proxy.latency_ms.clear()
    stack.http.delete(f"{stack.info['base_url']}/_emulator/faults", timeout=10)
    aws, puts, writes = stack.proxy.snapshot()
    ms_counts = stack.counts()
    summary = {k: v for k, v in body.items() if k != "connections"} if isinstance(body, dict) else None
    if kind != "response":
        raise RuntimeError(f"token-refresh answered {kind}: {str(body)[:1000]}")
    return {"writes_per_sec": per_second(writes), "write_calls": len(writes),"n": n, "latency": latency_ms, "setup": setup, "wall": wall, "rss": rss, "aws": aws, "microsoft": ms_counts,
            "summary": summary, "per_sec": per_second(puts)}


def print_refresh(r):
    """One line per refresh run as it ends, so a later failure does not lose its figures."""
    wps = r["writes_per_sec"]
    print(f"  {r['n']} connections: {r['wall']:.1f} s, setup {r['setup']:.0f} s, outcome {r['summary']}, "
          f"PutSecretValue peak {max(r['per_sec'], default=0)}/s, quota writes peak {max(wps, default=0)}/s, "
          f"AWS {dict(r['aws'])}", flush=True)


def per_second(times):
    """Calls in each one-second window, from the first call."""
    if not times:
        return []
    out = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        out[int(t - times[0])] += 1
    return out


# ---------------------------------------------------------------- size

FUNCTIONS = ("upload-ingest", "upload-worker", "oauth-callback", "token-refresh")


def sizes(arch, bin_dir):
    """Zipped bootstrap size per function: arm64 through cargo lambda (what SAM deploys), or
    this machine's release binaries zipped the same way (`host`, no cross build)."""
    if arch == "host":
        out = {}
        for f in FUNCTIONS:
            z = os.path.join(tempfile.gettempdir(), f"spbridge-bench-{f}.zip")
            with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.write(os.path.join(bin_dir, f), "bootstrap")
            out[f] = os.path.getsize(z)
            os.remove(z)
        return out
    target = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                                       capture_output=True, text=True).stdout)["target_directory"]
    # A target directory of its own: the cross build neither waits for nor evicts the host build.
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(target, "arm64"))
    cmd = ["cargo", "lambda", "build", "--release", "--arm64", "--locked", "--output-format", "zip"]
    for f in FUNCTIONS:
        cmd += ["-p", f]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-3000:]}
    return {f: os.path.getsize(os.path.join(env["CARGO_TARGET_DIR"], "lambda", f, "bootstrap.zip"))
            for f in FUNCTIONS}


# ---------------------------------------------------------------- report

def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) / 1024 / 1024
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} CPUs (`nproc`: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}), "
            f"{cpu}, {mem:.1f} GiB memory; {platform.system()} {platform.release()}; {rustc}; "
            f"Python {platform.python_version()}; load average at the end "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine is shared)")


def report(args, cold, warm, refresh, size, elapsed):
    L = []
    add = L.append
    add("# Benchmarks")
    add("")
    add("Made by `bash scripts/bench` (tests/bench/bench.py); do not edit by hand. "
        "Run it again to refresh these figures on your machine.")
    add("")
    add(f"- Machine: {machine()}")
    add(f"- Command: `{('bash scripts/bench ' + os.environ.get('BENCH_ARGS', '')).strip()}` "
        f"(took {elapsed / 60:.1f} min after the release build)")
    add(f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    add("- Everything ran in one run against one tenant emulator (HTTPS on 127.0.0.1, release build) and "
        "one moto server; spbridge's functions are release builds (`target/release`) started as fresh "
        "processes under a minimal Lambda Runtime API (`tests/bench/runtime_api.py`).")
    add("- Figures are medians with (min–max) over the runs; peak RSS is the process's `VmHWM` "
        "(high-water mark since exec, from /proc).")
    add("")
    if cold:
        o365, msal = statistics.median(cold["o365"]), statistics.median(cold["msal"])
        sp_total = [a + b for a, b in zip(cold["sp_ingest"], cold["sp_worker"])]
        g_total = [a + b for a, b in zip(cold["g_ingest"], cold["g_worker"])]
        add(f"## Cold start: a fresh process to the first 1 MiB upload done ({args.runs} runs each)")
        add("")
        add("spbridge takes an upload in two functions: upload-ingest answers the signed POST with 202 "
            "(signature, staging in S3, job in DynamoDB, message on SQS), then upload-worker takes the "
            "job (secrets, token, upload, job done). Each row starts a fresh process of the release "
            "binary with the event already waiting and stops the clock when the runtime API receives "
            "the answer. The end-to-end figure is the sum of both cold starts; the SQS hop between them "
            "(Lambda's event source mapping) is not in it. \"Init\" is exec to the runtime's first poll "
            "for an event (config, secret store, AWS SDK clients); the rest is the handler. The Python peers are fresh `python` "
            "processes timed from exec to their first upload done (imports, token, upload).")
        add("")
        add("| Path | Time | of which init | Ratio to peer | Peak RSS |")
        add("|---|---|---|---|---|")
        add(f"| upload-ingest, 1 MiB to SharePoint connection (ACS), to 202 | {fmt_spread([ms(x) for x in cold['sp_ingest']])} | {fmt_spread([ms(x) for x in cold['sp_init_ingest']])} | {statistics.median(cold['sp_ingest']) / o365:.3f}× | {fmt_spread(cold['sp_rss_ingest'], ' MiB')} |")
        add(f"| upload-worker, SharePoint REST (ACS token, 1 MiB), job done | {fmt_spread([ms(x) for x in cold['sp_worker']])} | {fmt_spread([ms(x) for x in cold['sp_init_worker']])} | {statistics.median(cold['sp_worker']) / o365:.3f}× | {fmt_spread(cold['sp_rss_worker'], ' MiB')} |")
        add(f"| **spbridge end to end, SharePoint REST** (ingest + worker) | **{fmt_spread([ms(x) for x in sp_total])}** | | **{statistics.median(sp_total) / o365:.3f}×** | |")
        add(f"| Office365-REST-Python-Client (ACS, SharePoint REST) | {fmt_spread([ms(x) for x in cold['o365']])} | | 1 | {fmt_spread(cold['o365_rss'], ' MiB')} |")
        add(f"| upload-ingest, 1 MiB to Graph connection, to 202 | {fmt_spread([ms(x) for x in cold['g_ingest']])} | {fmt_spread([ms(x) for x in cold['g_init_ingest']])} | {statistics.median(cold['g_ingest']) / msal:.3f}× | {fmt_spread(cold['g_rss_ingest'], ' MiB')} |")
        add(f"| upload-worker, Graph (Entra certificate token, 1 MiB), job done | {fmt_spread([ms(x) for x in cold['g_worker']])} | {fmt_spread([ms(x) for x in cold['g_init_worker']])} | {statistics.median(cold['g_worker']) / msal:.3f}× | {fmt_spread(cold['g_rss_worker'], ' MiB')} |")
        add(f"| **spbridge end to end, Graph** (ingest + worker) | **{fmt_spread([ms(x) for x in g_total])}** | | **{statistics.median(g_total) / msal:.3f}×** | |")
        add(f"| MSAL + requests (Entra certificate, Graph) | {fmt_spread([ms(x) for x in cold['msal']])} | | 1 | {fmt_spread(cold['msal_rss'], ' MiB')} |")
        add("")
        add("### Where the cold time goes: moto's share and the harness's")
        add("")
        add("moto is a Python server, much slower per call than the AWS services it stands in for. The "
            "runs above talk to moto directly; moto (`tests/support/moto_server.py`) adds up the time "
            "it has a request in progress (body read, its work, answer written), read before and after "
            "each function's run. The runtime API's share is the harness handing the ~1.4 MB event over "
            "(to its last byte written) and taking the answer; the peers have neither. \"spbridge's own\" "
            "is the time less both: its start, its CPU and the emulator's answers.")
        add("")
        add("| Path | Time | moto's own time | Runtime API | spbridge's own | Ratio to peer, own time |")
        add("|---|---|---|---|---|---|")
        for p, label, peer_t in (("sp", "SharePoint REST", o365), ("g", "Graph", msal)):
            rows = []
            for fn in ("ingest", "worker"):
                rows.append((f"upload-{fn}, {label}", cold[f"{p}_{fn}"], cold[f"{p}_moto_{fn}"], cold[f"{p}_h_{fn}"]))
            rows.append((f"**end to end, {label}**",
                         *([a + b for a, b in zip(cold[f"{p}_{k}_ingest" if k else f"{p}_ingest"],
                                                   cold[f"{p}_{k}_worker" if k else f"{p}_worker"])]
                           for k in ("", "moto", "h"))))
            for name, tot, moto, h in rows:
                own = [t - m - x for t, m, x in zip(tot, moto, h)]
                add(f"| {name} | {fmt_spread([ms(x) for x in tot])} | {fmt_spread([ms(x) for x in moto])} | "
                    f"{fmt_spread([ms(x) for x in h])} | **{fmt_spread([ms(x) for x in own])}** | "
                    f"**{statistics.median(own) / peer_t:.3f}×** |")
        add("")
    if warm:
        n = args.warm
        add(f"## Warm path: per accepted 1 MiB upload ({n} uploads each, after one warm-up)")
        add("")
        add("The same two processes take every upload. Latency is from queueing the event to the runtime "
            "API receiving the answer, with the functions talking to moto directly; CPU is the "
            "process's user+system time per upload (from /proc), which moto's own speed does not "
            f"touch. Requests are counted in a second pass of {args.counted} uploads where they "
            "arrive: AWS calls by counting proxies in front of moto (`tests/bench/aws_proxy.py`, one "
            "per function), Microsoft calls by the emulator (`GET /_emulator/requests`). "
            "upload-ingest talks only to AWS. The peers' latency is their upload call, token cached.")
        add("")
        add("| Path | Latency | CPU per upload | Token endpoint | SharePoint/Graph | AWS calls per upload | Peak RSS |")
        add("|---|---|---|---|---|---|---|")
        nc = args.counted
        for c, label in (("bench-sp", "SharePoint REST (ACS)"), ("bench-graph", "Graph (Entra certificate)")):
            w = warm[c]
            mc = w["microsoft"]
            api = mc.get("sharepoint", 0) + mc.get("graph", 0)
            add(f"| upload-ingest, {label}: to 202 | {fmt_spread([ms(x) for x in w['ingest']])} | {ms(w['cpu_ingest']):.1f} ms | 0 | 0 | {per_upload(w['aws'], nc)} | {w['rss_ingest']:.1f} MiB |")
            add(f"| upload-worker, {label}: job done | {fmt_spread([ms(x) for x in w['worker']])} | {ms(w['cpu_worker']):.1f} ms | {mc.get('token', 0) / nc:.2f} | {api / nc:.2f} | {per_upload(w['worker_aws'], nc)} | {w['rss_worker']:.1f} MiB |")
        for script, label in (("peer_office365.py", "Office365-REST-Python-Client (ACS, SharePoint REST)"),
                              ("peer_msal.py", "MSAL + requests (Graph)")):
            w = warm[script]
            mc = w["microsoft"]
            api = mc.get("sharepoint", 0) + mc.get("graph", 0)
            add(f"| {label} | {fmt_spread([ms(x) for x in w['times']])} | | {mc.get('token', 0) / n:.2f} | {api / n:.2f} | none | {w['rss']:.1f} MiB |")
        sp_ing = statistics.median(warm["bench-sp"]["ingest"])
        peer_sp = statistics.median(warm["peer_office365.py"]["times"])
        g_ing = statistics.median(warm["bench-graph"]["ingest"])
        peer_g = statistics.median(warm["peer_msal.py"]["times"])
        add("")
        add("Where the warm time goes, per upload (medians; measured in the same uploads as the latency "
            "above, the same way as for the cold start): moto's own time, the runtime API's (handing the "
            "~1.4 MB event over and taking the answer) and the rest, spbridge's own. The peers talk to "
            "neither, so their latency is theirs alone.")
        add("")
        add("| Path | Latency | moto's own time | Runtime API | spbridge's own | Peer's upload | Own time over peer |")
        add("|---|---|---|---|---|---|---|")
        for c, label, peer_key in (("bench-sp", "SharePoint REST (ACS)", "peer_office365.py"),
                                   ("bench-graph", "Graph (Entra certificate)", "peer_msal.py")):
            w = warm[c]
            peer_t = statistics.median(warm[peer_key]["times"])
            for fn, what in (("ingest", "to 202"), ("worker", "job done")):
                own = [t - m - h for t, m, h in zip(w[fn], w[f"moto_{fn}"], w[f"h_{fn}"])]
                add(f"| upload-{fn}, {label}: {what} | {ms(statistics.median(w[fn])):.1f} ms | "
                    f"{ms(statistics.median(w[f'moto_{fn}'])):.1f} ms | {ms(statistics.median(w[f'h_{fn}'])):.1f} ms | "
                    f"**{fmt_spread([ms(x) for x in own])}** | {ms(peer_t):.1f} ms | **{statistics.median(own) / peer_t:.2f}×** |")
        add("")
        add(f"Ratios (spbridge's accept, the sender's wait, over the peer's upload): SharePoint "
            f"{sp_ing / peer_sp:.2f}×, Graph {g_ing / peer_g:.2f}×. The accept includes the signature "
            "check, the idempotency digest, staging the body in S3 (through moto, a Python server) "
            "and the job's DynamoDB row and SQS message; the peers only upload. upload-ingest's own "
            f"CPU per accepted 1 MiB upload is {ms(warm['bench-sp']['cpu_ingest']):.1f} ms "
            f"(SharePoint) and {ms(warm['bench-graph']['cpu_ingest']):.1f} ms (Graph).")
        add("")
    for r in refresh or []:
        secs = r["wall"]
        puts = r["aws"].get("SecretsManager.PutSecretValue", 0)
        peak = max(r["per_sec"]) if r["per_sec"] else 0
        mean = puts / secs if secs else 0
        if r["latency"]:
            add(f"## Refresh at scale: token-refresh over {r['n']:,} delegated connections")
            add("")
            add(f"{r['latency']} ms injected on the token endpoint (an emulator latency fault on `/login/`) "
                "and on every Secrets Manager call (the counting proxy sleeps before forwarding to moto). "
                "One scheduled run of the token-refresh binary under the runtime API; every connection "
                "is due (never refreshed).")
        else:
            add(f"## Refresh with a fast store: {r['n']:,} more due connections, no injected latency")
            add("")
            add("The same, with nothing injected (moto and the emulator answer in a few ms), after the run "
                "above: its connections are listed again but are not due. This is where an unpaced run "
                "would exceed 50 writes a second.")
        add("")
        add("| Measure | Value |")
        add("|---|---|")
        add(f"| Wall time (exec to answer) | {secs:.1f} s |")
        add(f"| Outcome | {json.dumps(r['summary'])} |")
        add(f"| AWS calls | {', '.join(f'{k} {v}' for k, v in sorted(r['aws'].items()))} |")
        add(f"| Microsoft calls | {', '.join(f'{k} {v}' for k, v in sorted(r['microsoft'].items()))} |")
        writing = len(r["per_sec"])
        add(f"| PutSecretValue per second | mean {mean:.1f} over the run, {puts / writing if writing else 0:.1f} "
            f"over the {writing} s with writes; peak {peak} |")
        wps = r["writes_per_sec"]
        add(f"| Writes sharing PutSecretValue's quota (PutSecretValue, UpdateSecretVersionStage, ...) per second | "
            f"{r['write_calls'] / len(wps) if wps else 0:.1f} over the {len(wps)} s with writes; peak "
            f"{max(wps) if wps else 0} (quota 50 per Region for all of them together) |")
        add(f"| Peak RSS | {r['rss']:.1f} MiB |")
        add(f"| Setup (sign-ins and secrets, not timed above) | {r['setup']:.0f} s |")
        add("")
        add("Secrets Manager's 50 a second per Region is one quota for `PutSecretValue`, `UpdateSecret` "
            "and `UpdateSecretVersionStage` (and the replication calls) together, not for `PutSecretValue` "
            "alone; the second row of writes above is what that quota sees.")
        add("")
        if r["per_sec"]:
            add("PutSecretValue calls in each second of the run, from the first write:")
            add("")
            add("```")
            row = []
            for k, v in enumerate(r["per_sec"]):
                row.append(f"{v:3d}")
                if len(row) == 20:
                    add(" ".join(row))
                    row = []
            if row:
                add(" ".join(row))
            add("```")
            add("")
    if size is not None:
        if args.size_arch == "arm64":
            add("## Size: zipped bootstrap per function, arm64 (`cargo lambda build --release --arm64`)")
        else:
            add(f"## Size: zipped bootstrap per function, {platform.machine()} release build of this run "
                "(`--size-arch host`; the deployed arm64 build is `--size-arch arm64`)")
        add("")
        if "error" in size:
            add(f"The build failed:\n\n```\n{size['error']}\n```")
        else:
            add("| Function | Zipped | Goal |")
            add("|---|---|---|")
            for f, b in size.items():
                add(f"| {f} | {b / MIB:.2f} MiB ({b:,} bytes) | ≤ 5 MB {'✓' if b <= 5_000_000 else '✗'} |")
        add("")
    add("## Large files")
    add("")
    add("Chunked throughput for 1 GiB through each target is measured by "
        "`cargo run --release -p spbridge-tests --example large_bench` (owned by the large-files work); "
        + ("its output follows." if args.large_output else
           "it was left out of this run (`--skip large`), so this section has no figures."
           if "large" in args.skip.split(",") else
           "that example is not on this branch yet, so this section has no figures."))
    if args.large_output:
        add("")
        add("```")
        add(args.large_output.rstrip())
        add("```")
    add("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--counted", type=int, default=5, help="warm uploads through the counting proxies")
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--latency", type=int, default=50)
    ap.add_argument("--fast-connections", type=int, default=1000)
    ap.add_argument("--skip", default="", help="comma-separated: cold,warm,refresh,size,large")
    ap.add_argument("--size-arch", choices=("arm64", "host"), default="arm64")
    ap.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    ap.add_argument("--large-output", default="")
    ap.add_argument("--preamble", default="", help="a file whose text goes after the tables")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    cold = warm = refresh = None
    with tempfile.TemporaryDirectory(prefix="spbridge-bench-") as work:
        if {"cold", "warm", "refresh"} <= skip:
            stack = None
        else:
            stack = Stack(args.bin_dir, work)
        try:
            if "cold" not in skip:
                print(f"cold start: {args.runs} runs ...", flush=True)
                cold = cold_start(stack, args.runs)
            if "warm" not in skip:
                print(f"warm path: {args.warm} uploads per path ...", flush=True)
                warm = warm_path(stack, args.warm, args.counted)
            if "refresh" not in skip:
                print(f"refresh at scale: {args.connections} connections ...", flush=True)
                refresh = [refresh_at_scale(stack, args.connections, args.latency, "r")]
                print_refresh(refresh[-1])
                if args.fast_connections:
                    print(f"refresh, no injected latency: {args.fast_connections} more connections ...", flush=True)
                    refresh.append(refresh_at_scale(stack, args.fast_connections, 0, "f"))
                    print_refresh(refresh[-1])
        finally:
            if stack:
                stack.close()
    size = None
    if "size" not in skip:
        print(f"size ({args.size_arch}) ...", flush=True)
        size = sizes(args.size_arch, args.bin_dir)
    text = report(args, cold, warm, refresh, size, time.perf_counter() - started)
    if args.preamble and os.path.exists(args.preamble):
        text += "\n" + open(args.preamble).read()
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
