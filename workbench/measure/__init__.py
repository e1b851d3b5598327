"""Measurements that are not training runs but log like one (a claim arm can name one as its `entry`)."""
