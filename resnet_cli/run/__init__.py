"""Running a task over a stream of inputs: the job, the tasks, the streaming pipeline and the engines."""
