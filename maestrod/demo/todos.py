"""A small to-do REST service, standard library only.

Implements contract todos-api v1:
  GET  /todos            list_todos     -> 200 [todo, ...]
  POST /todos            create_todo    {"title": str} -> 201 todo
  POST /todos/{id}/done  complete_todo  -> 200 todo, 404 when unknown

Run it with: python3 src/api/todos.py [PORT]
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TodoStore:
    """The to-do list, safe to share between request threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._todos = {}
        self._next_id = 1

    def list_todos(self):
        with self._lock:
            return [dict(todo) for _, todo in sorted(self._todos.items())]

    def create_todo(self, title):
        title = (title or "").strip()
        if not title:
            raise ValueError("title must not be empty")
        with self._lock:
            todo = {"id": self._next_id, "title": title, "done": False}
            self._todos[todo["id"]] = todo
            self._next_id += 1
            return dict(todo)

    def complete_todo(self, todo_id):
        with self._lock:
            todo = self._todos[todo_id]  # the stored to-do itself, not a copy
            todo["done"] = True
            return dict(todo)


def make_handler(store):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/todos":
                self._reply(200, store.list_todos())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self):
            parts = [p for p in self.path.split("/") if p]
            if parts == ["todos"]:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    self._reply(201, store.create_todo(body.get("title")))
                except (ValueError, AttributeError) as error:
                    self._reply(400, {"error": str(error)})
            elif len(parts) == 3 and parts[0] == "todos" and parts[2] == "done" and parts[1].isdigit():
                try:
                    self._reply(200, store.complete_todo(int(parts[1])))
                except KeyError:
                    self._reply(404, {"error": f"no to-do {parts[1]}"})
            else:
                self._reply(404, {"error": "not found"})

        def log_message(self, *args):
            pass

    return Handler


def serve(port=8000, store=None):
    """Starts the service; returns the server (call serve_forever or shutdown)."""
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(store or TodoStore()))


if __name__ == "__main__":
    server = serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
    print(f"serving to-dos on http://127.0.0.1:{server.server_address[1]}/todos")
    server.serve_forever()
