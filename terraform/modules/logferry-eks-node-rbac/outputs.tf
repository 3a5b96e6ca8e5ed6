output "cluster_role_name" {
  description = "The ClusterRole granting get/list/watch on pods (and namespaces)."
  value       = kubernetes_cluster_role_v1.node.metadata[0].name
}

output "resources" {
  description = "The resources the role reads: pods, and namespaces when namespace_labels is on."
  value       = local.resources
}
