"""Where data flows: the faust app, topics, codecs, configuration and the local broker."""
