"""`helm test`: the webhook answers an admission review over TLS verified against the CA the apiserver trusts.

Standard library only (it runs in the operator image). It sends what the apiserver sends for a pod created
in the release namespace, which the operator never injects: an allowed answer, unchanged, with the review's uid.
"""

import json
import os
import ssl
import sys
import urllib.request
import uuid

url, ca_file, namespace = os.environ["WEBHOOK_URL"], os.environ["CA_FILE"], os.environ["NAMESPACE"]
uid = str(uuid.uuid4())
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helm-test-probe", "namespace": namespace},
       "spec": {"containers": [{"name": "c", "image": "probe"}]}}
review = {
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace, "operation": "CREATE", "userInfo": {"username": "helm-test"},
        "object": pod, "oldObject": None, "dryRun": True, "options": None,
    },
}
context = ssl.create_default_context(cafile=ca_file)  # verifies the chain and the Service's DNS name
request = urllib.request.Request(url, data=json.dumps(review).encode(), headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, context=context, timeout=10) as answer:
    response = json.load(answer).get("response") or {}
if response.get("uid") != uid or response.get("allowed") is not True or response.get("patch"):
    sys.exit(f"unexpected answer from {url}: {json.dumps(response)[:500]}")
print(f"webhook at {url} answered review {uid}: allowed, unchanged (TLS verified against {ca_file})")
