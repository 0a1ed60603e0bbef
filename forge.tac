"""nixforge as a system service: `twistd -n -y forge.tac`, configured by environment variables only."""

import os

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import ILogObserver

from nixforge.logs import stdout_observer
from nixforge.tap import config_or_exit, make_registry

config = config_or_exit(os.environ)
application = Application("nixforge")
application.setComponent(ILogObserver, stdout_observer(config.log_level))
make_registry(config, reactor).setServiceParent(application)
