"""Where data flows: the Kafka runtime every worker runs on (the faust app, the stages' common
machinery, topics, codecs, confirmed delivery, clients, metrics and health, configuration)."""
