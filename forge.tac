"""nixforge as a system service: `twistd -y forge.tac`, configured by environment variables only."""

import os
import sys

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from nixforge.logs import observer_for_command_line
from nixforge.registry import make_registry
from nixforge.tap import config_or_exit

config = config_or_exit(os.environ)
application = Application("nixforge")
observer = observer_for_command_line(sys.argv[1:], config.log_level)
if observer is not None:
    application.setComponent(ILogObserver, observer)
make_registry(config, reactor).setServiceParent(application)
