-- Append a log line.
append_log(A.level, A.message)
refresh()
return 1
