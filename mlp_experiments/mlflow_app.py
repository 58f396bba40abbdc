"""The MLflow tracking server `mlp-ui` starts (`mlflow server --app-name mlp-experiments`):
MLflow's own app, whose page starts a browser on MLflow's Model training view.

MLflow 3.17's UI opens an experiment on the view chosen in its sidebar's GenAI / Model training
switch, which it keeps in the browser's localStorage (`mlflow.workflowType_v1`) and which is
GenAI until a person chooses. It does not read the experiment tag `mlflow.experimentKind`
(stores.py sets it all the same, for the readers that do). One line of script in the page
makes Model training the choice of a browser that has made none; a choice a person makes later
stays theirs.
"""

from __future__ import annotations

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's localStorage key: `${key}_v${version}`
TRAINING_FIRST = (
    f'<script>localStorage.getItem("{WORKFLOW_KEY}")===null&&'
    f"localStorage.setItem(\"{WORKFLOW_KEY}\",'\"machine_learning\"')</script>"
).encode()


def create_app():
    """MLflow's ASGI app (what `mlflow server` runs by default) behind TrainingViewFirst."""
    from mlflow.server.fastapi_app import app

    return TrainingViewFirst(app)


class TrainingViewFirst:
    """ASGI middleware: MLflow's page (the HTML at `/`) gets TRAINING_FIRST before its own
    script; every other response passes through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = with_training_first(start, b"".join(body))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, rewrite)


def with_training_first(start: dict, page: bytes) -> bytes:
    """The page with TRAINING_FIRST at the top of its <head>, if it is MLflow's HTML page."""
    content_type = dict(start["headers"]).get(b"content-type", b"")
    if start["status"] != 200 or not content_type.startswith(b"text/html"):
        return page
    return page.replace(b"<head>", b"<head>" + TRAINING_FIRST, 1)
