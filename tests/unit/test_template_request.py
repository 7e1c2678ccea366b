"""java/TemplateProcess.java writes by hand the JSON request the launcher writes (launcher.py): the template must
read the same command line, environment and folder from it, whatever characters they hold."""

from __future__ import annotations

import json
import subprocess

from tests.support.java import compile_check

ODD = 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f é 中 \U0001f600 = end'


def test_javas_request_reads_back_as_the_command_line_environment_and_folder_java_had(tmp_path_factory):
    classes = compile_check(tmp_path_factory, "TemplateRequestCheck.java", with_ours=True)
    done = subprocess.run(
        [
            str(classes["java"]),
            "-cp",
            f"{classes['check']}:{classes['ours']}:{classes['jar']}",
            "com.amazonaws.ml.mms.wlm.TemplateRequestCheck",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    request = json.loads(done.stdout.decode("utf-8").splitlines()[-1])  # after whatever MMS's logging prints
    assert request == {
        "argv": ["/mms/model_service_worker.py", "--model-name", ODD, ""],  # MMS's python (argv[0]) left out
        "env": {"PLAIN": "value", "ODD": ODD, "EQUALS": "a=b=c", "EMPTY": ""},  # entries with no name dropped
        "cwd": "/models/" + ODD,
        "streams": "fifo",
    }
