-- What each replica read of a server's budget (its max_connections less the
-- reserves), recorded with its allocation: a replica that has not connected to
-- that server yet takes its first allocation from it, so that even its first
-- connection is within the group's budget.
ALTER TABLE budget_allocations ADD COLUMN available integer CHECK (available >= 0);
