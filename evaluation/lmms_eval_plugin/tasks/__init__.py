"""`<plugin>.tasks`, which lmms-eval's `LMMS_EVAL_PLUGINS` expects to exist: it adds this folder to its task paths.

It holds no task: the plugin's tasks live next to their documents, in the folder `gap-mllm export-lmms --out DIR`
writes (the data location is the user's), and lmms-eval reads them with `--include_path DIR`. (lmms-eval 0.7.3 also
adds a plugin's task folder only after it has indexed the tasks, so a task here would not be found anyway.)
"""
