"""Tests of the to-do service and its command-line client, against contract todos-api v1."""

import io
import os
import sys
import threading
import unittest
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from api import todos  # noqa: E402
from ui import cli  # noqa: E402


class StoreTest(unittest.TestCase):
    def test_create_and_list(self):
        store = todos.TodoStore()
        store.create_todo("write tests")
        store.create_todo("ship")
        self.assertEqual([t["title"] for t in store.list_todos()], ["write tests", "ship"])

    def test_empty_title_is_rejected(self):
        with self.assertRaises(ValueError):
            todos.TodoStore().create_todo("  ")

    def test_complete_persists(self):
        store = todos.TodoStore()
        todo = store.create_todo("water the plants")
        store.complete_todo(todo["id"])
        self.assertTrue(store.list_todos()[0]["done"], "a completed to-do stays done")


class ServiceTest(unittest.TestCase):
    def setUp(self):
        self.server = todos.serve(0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()

    def run_cli(self, *argv):
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["--url", self.url, *argv])
        return code, out.getvalue()

    def test_round_trip_through_the_cli(self):
        self.assertEqual(self.run_cli("add", "buy", "milk"), (0, "[ ]   1  buy milk\n"))
        self.assertEqual(self.run_cli("done", "1")[0], 0)
        self.assertEqual(self.run_cli("list"), (0, "[x]   1  buy milk\n"))

    def test_unknown_todo_is_404(self):
        code, _ = self.run_cli("done", "42")
        self.assertEqual(code, 1)


class FormatTest(unittest.TestCase):
    def test_empty_list(self):
        self.assertEqual(cli.format_todos([]), "nothing to do")


if __name__ == "__main__":
    unittest.main()
