output "json" {
  description = "The IAM policy document (JSON) with exactly the permissions of the chosen sinks: for an ECS task role, an instance role, or an EKS IRSA role."
  value       = data.aws_iam_policy_document.router.json
}
