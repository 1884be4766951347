"""The relay room (中継): the hub carries electronic envelopes (電子封筒) from a sender to the
receivers a route names, deciding, translating pseudonyms, logging and delivering each one."""
