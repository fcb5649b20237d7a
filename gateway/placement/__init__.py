"""Where rooms and sessions live: the directory of workers, rooms and sessions, the worker
protocol's gateway side (registry), and the supervisor of the local worker processes.
"""
