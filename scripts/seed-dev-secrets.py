"""Writes the local demo's secrets (file secret store format) from the emulator's info line.

usage: python3 scripts/seed-dev-secrets.py EMULATOR_INFO_JSON SECRET_DIR
Everything written here is the emulator's throwaway test material, never a real credential.
"""
import base64
import json
import os
import sys

SAMPLE_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write(secret_dir, name, value):
    path = os.path.join(secret_dir, name.replace("/", "%2F") + ".json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": "seed-1", "value": value}, f, indent=2)
    os.replace(tmp, path)


def main():
    info = json.load(open(sys.argv[1]))
    secret_dir = sys.argv[2]
    app = next(a for a in info["entra_apps"] if a["name"] == "entra-app")
    site = info["sites"][0]
    library = site["libraries"][0]
    write(secret_dir, "spbridge/app", {
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        "certificate_pem": app["certificate_pem"],
        "private_key_pem": app["private_key_pem"],
        "tenant_id": info["tenant_id"],
        "state_signing_key": base64.b64encode(os.urandom(32)).decode(),
    })
    write(secret_dir, "spbridge/webhook", {"secrets": [SAMPLE_WEBHOOK_SECRET]})
    write(secret_dir, "spbridge/connections/demo", {
        "provider": "entra",
        "auth": "app_only",
        "target": {
            "kind": "sharepoint",
            "site_url": site["url"],
            "library": library["server_relative_url"].rsplit("/", 1)[-1],
            "base_folder": "inbox",
        },
        "status": "active",
        "tenant_id": info["tenant_id"],
        "generation": 1,
    })
    write(secret_dir, "spbridge/connections/demo-graph", {
        "provider": "entra",
        "auth": "app_only",
        "target": {"kind": "drive", "drive_id": library["drive_id"]},
        "status": "active",
        "tenant_id": info["tenant_id"],
        "generation": 1,
    })
    # A delegated connection: a browser visit to /connect/demo-user signs the emulator's user in.
    write(secret_dir, "spbridge/connections/demo-user", {
        "provider": "entra",
        "auth": "delegated",
        "target": {"kind": "drive", "drive_id": "me"},
        "scopes": ["Files.ReadWrite", "offline_access"],
        "status": "active",
        "tenant_id": info["tenant_id"],
        "generation": 0,
    })
    # What upload-ingest reads: each connection's own sender secret. The demo connections share
    # the sample secret so scripts/demo-upload can sign for any of them.
    for connection in ("demo", "demo-graph", "demo-user"):
        write(secret_dir, f"spbridge/senders/{connection}",
              {"webhook_secrets": [SAMPLE_WEBHOOK_SECRET]})
    print(f"seeded demo secrets in {secret_dir}: spbridge/app, spbridge/webhook, "
          "spbridge/connections/{demo,demo-graph,demo-user}, "
          "spbridge/senders/{demo,demo-graph,demo-user}")


if __name__ == "__main__":
    main()
