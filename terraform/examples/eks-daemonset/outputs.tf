output "role_arn" {
  description = "Put it in eks/daemonset/serviceaccount.yaml (annotation eks.amazonaws.com/role-arn)."
  value       = module.role.role_arn
}

output "bucket_name" {
  description = "Put it in the daemon's LOGFERRY_BUCKET (eks/daemonset/daemonset.yaml)."
  value       = module.destinations.bucket_name
}

output "cluster_role_name" {
  description = "The ClusterRole bound to the daemon's service account (get/list/watch on pods and namespaces)."
  value       = module.rbac.cluster_role_name
}
