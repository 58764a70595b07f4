"""`helm test`: the webhook answers an admission review over TLS verified against the CA the apiserver trusts.

Standard library only (it runs in the operator image). It sends what the apiserver sends for a pod created
in the release namespace, which the operator never injects: an allowed answer, unchanged, with the review's uid.
It connects to WEBHOOK_ADDRESS (the Service's ClusterIP, from the environment Kubernetes gives pods; no DNS
needed) and verifies the certificate for WEBHOOK_HOST, the Service's DNS name the apiserver checks too.
"""

import json
import os
import socket
import ssl
import sys
import uuid

host, port = os.environ["WEBHOOK_HOST"], int(os.environ["WEBHOOK_PORT"])
address = os.environ.get("WEBHOOK_ADDRESS", "")
address = host if not address or address.startswith("$(") else address  # unexpanded: no service links
ca_file, namespace, path = os.environ["CA_FILE"], os.environ["NAMESPACE"], os.environ["WEBHOOK_PATH"]
uid = str(uuid.uuid4())
pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "helm-test-probe", "namespace": namespace},
    "spec": {"containers": [{"name": "c", "image": "probe"}]},
}
review = json.dumps({
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "helm-test"},
        "object": pod,
        "oldObject": None,
        "dryRun": True,
        "options": None,
    },
}).encode()
context = ssl.create_default_context(cafile=ca_file)  # the chain, and the certificate's name against `host`
head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(review)}\r\nConnection: close\r\n\r\n").encode()
raw = socket.create_connection((address, port), timeout=10)
with context.wrap_socket(raw, server_hostname=host) as tls:  # closes raw too
    tls.sendall(head + review)
    answer = b""
    while chunk := tls.recv(65536):
        answer += chunk
status_line, _, rest = answer.partition(b"\r\n")
body = rest.partition(b"\r\n\r\n")[2]
if b" 200 " not in status_line + b" ":
    sys.exit(f"webhook at {address}:{port} answered {status_line.decode(errors='replace')}")
response = json.loads(body).get("response") or {}
if response.get("uid") != uid or response.get("allowed") is not True or response.get("patch"):
    sys.exit(f"unexpected answer from {address}:{port}: {json.dumps(response)[:500]}")
print(f"webhook {host} at {address}:{port} answered review {uid}: allowed, unchanged (TLS verified against {ca_file})")
