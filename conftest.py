# Repository-level conftest: the plugin itself is loaded through its entry point.
