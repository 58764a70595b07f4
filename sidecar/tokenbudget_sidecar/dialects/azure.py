"""Azure OpenAI: OpenAI's wire format under a resource endpoint, the model chosen by the deployment in the path.

What differs from OpenAI (docs/wire-formats.md, "Azure OpenAI"), for the openai SDK's `AzureOpenAI` client
(`azure_endpoint` = the sidecar's `/<upstream>` prefix):

- paths: `/openai/deployments/{deployment}/chat/completions` (also `completions`, `embeddings`) with
  `?api-version=...` (forwarded untouched), the v1 API's `/openai/v1/...` (model in the body), and routes
  without a deployment (`/openai/responses`, `/openai/images/generations`...) read as OpenAI's `/v1/...`;
- auth: the `api-key` header (or an Entra ID bearer token, forwarded as is);
- the deployment is what the app calls: limits and records name it, `Downgrade` maps deployments to
  deployments (the path is rewritten), and the upstream's `deployments` map names the model each serves, for
  prices (pricing.PriceBook aliases).
"""

from __future__ import annotations

import re

from tokenbudget_sidecar.dialects.base import JSON, Call
from tokenbudget_sidecar.dialects.openai import OPERATIONS, OpenAIDialect

DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)(/(?:chat/completions|completions|embeddings|images/generations"
                        r"|images/edits|audio/transcriptions))$")


class AzureOpenAIDialect(OpenAIDialect):
    name = "azure"
    auth_header = "api-key"

    def operation(self, method: str, path: str) -> str | None:
        match = DEPLOYMENT.match(path)
        if match is not None:
            return OPERATIONS["/v1" + match.group(2)] if method == "POST" else None
        if path.startswith("/openai/v1/"):
            return super().operation(method, path[len("/openai"):])
        if path.startswith("/openai/"):  # routes without a deployment (responses, images, models...): OpenAI's
            return super().operation(method, "/v1" + path[len("/openai"):])
        return None

    def parse(self, operation: str, path: str, body: JSON, user_header: str | None) -> Call:
        match = DEPLOYMENT.match(path)
        if match is not None and not isinstance(body.get("model"), str):
            body = {**body, "model": match.group(1)}  # the path names it; the body need not
        call = super().parse(operation, path, body, user_header)
        if match is not None:
            call.model = match.group(1)
        return call

    def set_model(self, call: Call, body: JSON, path: str, model: str) -> str:
        """Downgrade to another deployment: the path chooses it (the body's model too, when it has one)."""
        match = DEPLOYMENT.match(path)
        if match is None:
            return super().set_model(call, body, path, model)
        if "model" in body:
            body["model"] = model
        call.model = model
        return f"/openai/deployments/{model}{match.group(2)}"

    def auth(self, key: str) -> dict[str, str]:
        return {"api-key": key}
