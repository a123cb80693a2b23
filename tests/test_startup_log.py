"""The start-up checks' messages reach log.txt: held while the folder is not claimed, then
written to the run's log file (not printed twice)."""
import io
import logging
import sys

from eir.engine.startup_log import held_startup_records, write_to_log_files


def test_held_records_are_printed_once_and_written_to_the_log_file_only(capsys):
    name = "eir_startup_log_test"  # not the project's logger: other tests set that one up
    logger = logging.getLogger(name)
    child = logging.getLogger(f"{name}.checks")
    assert logger.level == logging.NOTSET
    with held_startup_records(name) as held:
        child.warning("dataset leaves out 1 image")
        child.info("checked 24 headers")
        child.debug("not kept: below the log's level")
    assert [r.getMessage() for r in held] == ["dataset leaves out 1 image", "checked 24 headers"]
    assert capsys.readouterr().err == "dataset leaves out 1 image\n"  # the warning only, as Python prints it
    assert logger.level == logging.NOTSET and not logger.handlers  # as before the block

    log_file, console = io.StringIO(), logging.StreamHandler(sys.stdout)
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(console)
    logger.addHandler(file_handler)
    try:
        assert write_to_log_files(held, name) == 1
    finally:
        logger.removeHandler(console)
        logger.removeHandler(file_handler)
    assert log_file.getvalue() == (f"WARNING {name}.checks: dataset leaves out 1 image\n"
                                   f"INFO {name}.checks: checked 24 headers\n")
    assert capsys.readouterr().out == ""  # the console printed them already


def test_a_logger_set_to_a_level_keeps_it():
    logger = logging.getLogger("eir_startup_log_test_debug")
    logger.setLevel(logging.DEBUG)
    with held_startup_records(logger.name) as held:
        logger.debug("kept")
    assert [r.getMessage() for r in held] == ["kept"] and logger.level == logging.DEBUG
