"""Membership: announcing records, reading the swarm view (gossip comes next)."""
