"""A real Apache Kafka of one's own, on loopback: a single KRaft broker or a cluster of N nodes,
with its jars resolved by Maven, for laptops, demos and the tests. The workers never import it:
they connect to whatever `bootstrap_servers` names."""
