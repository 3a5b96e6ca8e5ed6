output "role_arn" {
  description = "For the service account's eks.amazonaws.com/role-arn annotation."
  value       = aws_iam_role.this.arn
}

output "cluster_endpoint" {
  description = "The cluster's API endpoint (for a kubernetes provider)."
  value       = data.aws_eks_cluster.this.endpoint
}

output "cluster_ca" {
  description = "The cluster's CA certificate, base64 (for a kubernetes provider)."
  value       = data.aws_eks_cluster.this.certificate_authority[0].data
}
